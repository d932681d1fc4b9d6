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
//! - `logs.rs`: task logs, from the worker that ran the attempt or else
//!   from the log store.

mod error;
mod extract;
mod logs;
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
use sluice_runtime::{CancellationToken, Role, RoleError, RoleTasks};
use sluice_logs::LogStore;
use sluice_registry::Registry;
use sluice_storage::Store;
use sluice_tasks::TaskPlugins;
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
    log_store: Option<Arc<dyn LogStore>>,
    commands: routes::CommandSignal,
    bound: Option<SocketAddr>,
    shutdown: CancellationToken,
    /// The HTTP server, which must run until `stop`.
    tasks: RoleTasks,
}

impl ApiServer {
    pub fn new(listen: SocketAddr, store: Arc<dyn Store>) -> Self {
        ApiServer {
            listen,
            store,
            plugins: TaskPlugins::builtin(),
            log_store: None,
            commands: routes::CommandSignal::default(),
            bound: None,
            shutdown: CancellationToken::new(),
            tasks: RoleTasks::default(),
        }
    }

    /// The task types workflows may use (default: the built-in ones). The
    /// API checks documents against them before storing anything.
    pub fn with_plugins(mut self, plugins: TaskPlugins) -> Self {
        self.plugins = plugins;
        self
    }

    /// Where task logs are read when their worker cannot serve them
    /// (gone, or never had that attempt).
    pub fn with_log_store(mut self, store: Arc<dyn LogStore>) -> Self {
        self.log_store = Some(store);
        self
    }

    /// The cluster's registry: after inserting commands (runs, run
    /// commands, backfills) the API signals the masters, which scan at
    /// once instead of at their next poll. Without one, they poll.
    pub fn with_registry(mut self, registry: Arc<dyn Registry>) -> Self {
        self.commands = routes::CommandSignal::new(registry);
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
        description = "Projects, workflows (as YAML or JSON documents, versioned), schedules, runs, backfills, workflow and task instances. \
            Every error has the shape `{\"error\": {\"code\", \"message\", \"field\"?}}`."
    ),
    tags(
        (name = "meta", description = "Health"),
        (name = "projects", description = "Namespaces for workflows"),
        (name = "workflows", description = "Workflow definitions and their versions"),
        (name = "schedules", description = "When workflows fire by themselves: cron or interval, online or offline"),
        (name = "runs", description = "Starting runs; workflow and task instances; run commands (stop, kill, rerun, recover, pause, resume, force-success)"),
        (name = "backfills", description = "Runs of a workflow over past dates, serial or parallel, stoppable as a whole"),
        (name = "logs", description = "Task logs: pages by byte offset, live follow (Server-Sent Events), download"),
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

/// The largest request body the API reads: a workflow definition may
/// carry big scripts (they never go through the registry: a queue entry
/// holds only the attempt's key). Larger bodies get 413.
pub const MAX_REQUEST_BODY: usize = 64 << 20;

/// The API's routes, without a listener.
fn router(store: Arc<dyn Store>, plugins: TaskPlugins, log_store: Option<Arc<dyn LogStore>>, commands: routes::CommandSignal) -> Router {
    let (router, document) = documented_routes().split_for_parts();
    let document = Arc::new(document.to_pretty_json().expect("the OpenAPI document renders as JSON"));
    router
        .route("/api/v1/openapi.json", get(move || std::future::ready(routes::openapi_json(document.clone()))))
        .route("/api/v1/docs", get(routes::docs_page))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn(log_request))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .with_state(AppState { store, plugins: Arc::new(plugins), logs: logs::LogAccess::new(log_store), commands })
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
        let app = router(self.store.clone(), self.plugins.clone(), self.log_store.clone(), self.commands.clone());
        let shutdown = self.shutdown.clone();
        self.tasks.spawn("http server", async move { axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await });
        tracing::info!(addr = %bound, "api listening");
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), RoleError> {
        self.shutdown.cancel();
        self.tasks.join().await;
        Ok(())
    }

    async fn ended(&mut self) -> RoleError {
        self.tasks.ended().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_domain::*;
    use sluice_storage::{PoolOptions, SqliteStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request over a fresh connection: the status and the body.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {out}"));
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    /// A request with a JSON body.
    async fn send_json(addr: SocketAddr, method: &str, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = body.to_string();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {out}"));
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}")))
    }

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
        assert_eq!(operations.len(), 31, "{operations:#?}");
        for operation in [
            "put /api/v1/projects/{project}/workflows/{name}",
            "post /api/v1/task-instances/{id}/kill",
            "get /api/v1/projects/{project}/workflows/{name}/schedule",
            "put /api/v1/projects/{project}/workflows/{name}/schedule",
            "post /api/v1/projects/{project}/workflows/{name}/schedule/online",
            "post /api/v1/projects/{project}/workflows/{name}/schedule/offline",
            "get /api/v1/projects/{project}/workflows/{name}/schedule/preview",
            "post /api/v1/workflow-instances/{id}/rerun",
            "post /api/v1/workflow-instances/{id}/recover",
            "post /api/v1/workflow-instances/{id}/pause",
            "post /api/v1/workflow-instances/{id}/resume",
            "post /api/v1/task-instances/{id}/force-success",
            "post /api/v1/projects/{project}/workflows/{name}/backfill",
            "get /api/v1/backfills/{id}",
            "post /api/v1/backfills/{id}/stop",
            "get /api/v1/task-instances/{id}/log",
            "get /api/v1/task-instances/{id}/log/stream",
            "get /api/v1/task-instances/{id}/log/download",
        ] {
            assert!(operations.iter().any(|o| o == operation), "{operation} missing from {operations:#?}");
        }
        let schemas = &document["components"]["schemas"];
        for schema in ["TaskLogPage", "BackfillRequest", "BackfillAccepted", "BackfillPreview", "BackfillView", "BackfillRunView", "BackfillStopped"] {
            assert!(schemas.get(schema).is_some(), "schema {schema} missing");
        }
        let request = &schemas["BackfillRequest"]["properties"];
        assert_eq!(request["parallelism"]["maximum"], 100, "{request:#}");
        // Why a task (or an instance) ended, and a task type's own fields.
        for (schema, property) in [("TaskInstanceView", "reason"), ("WorkflowInstanceView", "reason"), ("TaskDocumentSchema", "with")] {
            let properties = &schemas[schema]["properties"];
            assert!(properties.get(property).is_some(), "{schema}.{property} missing: {properties:#}");
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

    /// Without any master (nobody creates runs): a backfill is stored as
    /// asked, a dry run stores nothing, and a backfill stops once.
    #[tokio::test]
    async fn backfills_are_stored_previewed_and_stopped_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("s.db").to_str().unwrap(), PoolOptions::sized(2)).await.unwrap());
        let project = store.create_project("p", "", &Params::new()).await.unwrap();
        let mut task = TaskSpec::new("a", "shell");
        task.body.insert("script".into(), "true".into());
        let spec = WorkflowSpec {
            name: "w".into(),
            description: String::new(),
            params: Params::new(),
            failure_strategy: FailureStrategy::End,
            priority: Priority::Medium,
            worker_group: WorkerGroup::default(),
            tasks: vec![task],
        };
        let workflow = store.save_workflow(project.id, &spec).await.unwrap().id;
        let trigger = Trigger::Cron { expression: "0 30 2 * * ?".into(), timezone: "Asia/Shanghai".into() };
        store.set_schedule(workflow, &ScheduleSpec { trigger, start: None, end: None, misfire: MisfirePolicy::RunOnce }).await.unwrap();
        let mut api = ApiServer::new("127.0.0.1:0".parse().unwrap(), store.clone());
        api.start().await.unwrap();
        let addr = api.local_addr().unwrap();
        let path = "/api/v1/projects/p/workflows/w/backfill";

        let body = serde_json::json!({"start": "2026-02-27", "end": "2026-03-01", "order": "desc", "dry_run": true});
        let (status, preview) = send_json(addr, "POST", path, &body).await;
        assert_eq!(status, 200, "{preview}");
        assert_eq!((preview["timezone"].as_str(), preview["parallelism"].as_u64()), (Some("Asia/Shanghai"), Some(1)));
        assert_eq!(
            preview["runs"],
            serde_json::json!([
                {"date": "2026-03-01", "schedule_time": "2026-03-01T02:30:00+08:00"},
                {"date": "2026-02-28", "schedule_time": "2026-02-28T02:30:00+08:00"},
                {"date": "2026-02-27", "schedule_time": "2026-02-27T02:30:00+08:00"},
            ])
        );
        assert!(store.backfill(BackfillId(1)).await.unwrap().is_none(), "a dry run stored a backfill");

        let body = serde_json::json!({"dates": ["2026-03-02", "2026-03-01"], "mode": "parallel", "params": {"k": "v"}});
        let (status, accepted) = send_json(addr, "POST", path, &body).await;
        assert_eq!(status, 202, "{accepted}");
        assert_eq!(accepted["runs"], 2);
        let id = accepted["backfill_id"].as_i64().unwrap();
        let stored = store.backfill(BackfillId(id)).await.unwrap().unwrap();
        let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&chrono::Utc);
        assert_eq!(stored.spec.schedule_times, [at("2026-03-01T02:30:00+08:00"), at("2026-03-02T02:30:00+08:00")]);
        assert_eq!((stored.spec.parallelism, stored.spec.workflow_version, stored.spec.params["k"].as_str()), (2, 1, "v"));

        let (status, view) = send_json(addr, "GET", &format!("/api/v1/backfills/{id}"), &serde_json::json!({})).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!((view["state"].as_str(), view["created_runs"].as_u64(), view["total_runs"].as_u64()), (Some("running"), Some(0), Some(2)));
        assert_eq!((view["project"].as_str(), view["workflow"].as_str(), view["runs"].as_array().map(Vec::len)), (Some("p"), Some("w"), Some(0)));

        let stop = format!("/api/v1/backfills/{id}/stop");
        let (status, stopped) = send_json(addr, "POST", &stop, &serde_json::json!({})).await;
        assert_eq!((status, &stopped["state"], &stopped["stopping"]), (202, &serde_json::json!("stopped"), &serde_json::json!([])), "{stopped}");
        let (status, again) = send_json(addr, "POST", &stop, &serde_json::json!({})).await;
        assert_eq!((status, again["error"]["message"].as_str()), (409, Some(format!("backfill {id} is already stopped").as_str())));
        let (status, missing) = send_json(addr, "GET", "/api/v1/backfills/987654", &serde_json::json!({})).await;
        assert_eq!((status, missing["error"]["message"].as_str()), (404, Some("backfill 987654 not found")));
        let (status, bad) = send_json(addr, "POST", "/api/v1/backfills/x/stop", &serde_json::json!({})).await;
        assert_eq!((status, bad["error"]["field"].as_str()), (400, Some("id")));
        api.stop().await.unwrap();
    }

    /// An instance of `workflow` put in `state` with tasks in the given
    /// states, as a master would have left it (no master runs here).
    async fn instance_in(store: &dyn Store, workflow: WorkflowId, state: WorkflowState, tasks: &[(&str, TaskState)]) -> (i64, Vec<i64>) {
        let def = store.workflow_by_id(workflow, None).await.unwrap().unwrap();
        let new = NewWorkflowInstance { owner: Some("test".into()), ..NewWorkflowInstance::start(&def) };
        let wi = store.create_workflow_instance(&new).await.unwrap();
        let fence = wi.fence();
        let path = WorkflowState::Submitted.path_to(state).unwrap();
        store.change_workflow(fence, &WorkflowChange { from: WorkflowState::Submitted, events: path, update: WorkflowUpdate::default() }).await.unwrap();
        let mut ids = Vec::new();
        for (name, task_state) in tasks {
            let definition = def.task(name).unwrap();
            let new = NewTaskInstance {
                workflow_instance_id: wi.id,
                task_definition_id: definition.id,
                name: name.to_string(),
                task_type: definition.spec.task_type.clone(),
                priority: Priority::Medium,
                worker_group: WorkerGroup::default(),
                max_retries: 0,
                run: 1,
                events: Vec::new(),
                message: None,
            };
            let task = store.create_tasks(fence, &[new]).await.unwrap().remove(0);
            let path = TaskState::Submitted.path_to(*task_state).unwrap();
            store.change_task(fence, &TaskChange::new(&task, path, TaskUpdate::default())).await.unwrap();
            ids.push(task.id.get());
        }
        (wi.id.get(), ids)
    }

    /// Without any master: every refusal is decided by the API from the
    /// transition tables and the command queue, before anything is written.
    #[tokio::test]
    async fn run_commands_are_checked_against_the_state_and_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("s.db").to_str().unwrap(), PoolOptions::sized(2)).await.unwrap());
        let project = store.create_project("p", "", &Params::new()).await.unwrap();
        let mut spec = WorkflowSpec {
            name: "w".into(),
            description: String::new(),
            params: Params::new(),
            failure_strategy: FailureStrategy::Continue,
            priority: Priority::Medium,
            worker_group: WorkerGroup::default(),
            tasks: Vec::new(),
        };
        for (name, deps) in [("a", vec![]), ("b", vec!["a".to_string()])] {
            let mut task = TaskSpec::new(name, "shell");
            task.body.insert("script".into(), "true".into());
            task.deps = deps;
            spec.tasks.push(task);
        }
        let workflow = store.save_workflow(project.id, &spec).await.unwrap().id;
        let mut api = ApiServer::new("127.0.0.1:0".parse().unwrap(), store.clone());
        api.start().await.unwrap();
        let addr = api.local_addr().unwrap();
        let post = |path: String| async move { request(addr, "POST", &format!("/api/v1{path}")).await };
        let conflict = |(status, body): (u16, String), needle: &str| {
            assert_eq!(status, 409, "{body}");
            assert!(body.contains(needle), "expected `{needle}` in {body}");
        };
        let accepted = |(status, body): (u16, String)| -> serde_json::Value {
            assert_eq!(status, 202, "{body}");
            serde_json::from_str(&body).unwrap()
        };

        let (ok, ok_tasks) = instance_in(store.as_ref(), workflow, WorkflowState::Success, &[("a", TaskState::Success), ("b", TaskState::Success)]).await;
        conflict(post(format!("/workflow-instances/{ok}/pause")).await, &format!("workflow instance {ok} is success: pause needs it running"));
        conflict(post(format!("/workflow-instances/{ok}/resume")).await, "is success: resume needs it paused");
        conflict(post(format!("/workflow-instances/{ok}/recover")).await, "is success: recover needs it stopped or failure");
        conflict(post(format!("/task-instances/{}/force-success", ok_tasks[0])).await, "(`a`) is success: force-success needs it failure or killed");
        let rerun = accepted(post(format!("/workflow-instances/{ok}/rerun")).await);
        assert_eq!((rerun["workflow_instance_id"].as_i64(), rerun["run"].as_u64()), (Some(ok), Some(2)));
        conflict(post(format!("/workflow-instances/{ok}/rerun")).await, "already has a restart queued");

        let (failed, failed_tasks) =
            instance_in(store.as_ref(), workflow, WorkflowState::Failure, &[("a", TaskState::Success), ("b", TaskState::Failure)]).await;
        let forced = accepted(post(format!("/task-instances/{}/force-success", failed_tasks[1])).await);
        assert_eq!((forced["workflow_instance_id"].as_i64(), forced["run"].as_u64()), (Some(failed), Some(2)));
        conflict(post(format!("/workflow-instances/{failed}/recover")).await, "already has a restart queued");

        let (running, running_tasks) =
            instance_in(store.as_ref(), workflow, WorkflowState::Running, &[("a", TaskState::Failure), ("b", TaskState::Running)]).await;
        conflict(post(format!("/workflow-instances/{running}/rerun")).await, "is running: rerun needs it stopped, success or failure");
        conflict(post(format!("/workflow-instances/{running}/resume")).await, "is running: resume needs it paused");
        let forced = accepted(post(format!("/task-instances/{}/force-success", running_tasks[0])).await);
        assert!(forced.get("run").is_none(), "a running instance is not restarted: {forced}");
        conflict(post(format!("/task-instances/{}/force-success", running_tasks[1])).await, "is running: force-success needs it failure or killed");
        accepted(post(format!("/workflow-instances/{running}/pause")).await);

        let (paused, paused_tasks) = instance_in(store.as_ref(), workflow, WorkflowState::Paused, &[("a", TaskState::Killed)]).await;
        conflict(post(format!("/task-instances/{}/force-success", paused_tasks[0])).await, "is paused: force-success needs it running, ready_pause, stopped or failure");
        conflict(post(format!("/workflow-instances/{paused}/pause")).await, "is paused: pause needs it running");
        let resumed = accepted(post(format!("/workflow-instances/{paused}/resume")).await);
        assert!(resumed.get("run").is_none(), "resume goes on with the same run: {resumed}");
        conflict(post(format!("/workflow-instances/{paused}/resume")).await, "already has a restart queued");

        for path in ["/workflow-instances/987654/rerun", "/workflow-instances/987654/recover", "/workflow-instances/987654/pause", "/workflow-instances/987654/resume", "/task-instances/987654/force-success"] {
            let (status, body) = post(path.to_owned()).await;
            assert_eq!(status, 404, "{path}: {body}");
        }
        let (status, body) = post("/workflow-instances/x/rerun".into()).await;
        assert!(status == 400 && body.contains(r#""field":"id""#), "{body}");

        // What was accepted is queued; nothing else was written.
        let kinds: Vec<(Option<i64>, CommandKind)> = store
            .unclaimed_commands()
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.spec.workflow_instance_id().map(|i| i.get()), c.spec.kind()))
            .collect();
        assert_eq!(
            kinds,
            [
                (Some(ok), CommandKind::Rerun),
                (Some(failed), CommandKind::RecoverFailure),
                (Some(running), CommandKind::ForceSuccess),
                (Some(running), CommandKind::Pause),
                (Some(paused), CommandKind::Resume),
            ]
        );
        api.stop().await.unwrap();
    }
}
