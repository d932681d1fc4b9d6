//! The api-server role: Sluice's REST API under `/api/v1`. It writes
//! commands and reads state; it never runs workflows itself.

pub mod types;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sluice_runtime::{CancellationToken, Role, RoleError};
use sluice_storage::Store;
use tokio::task::JoinHandle;

#[derive(Clone)]
struct AppState {
    store: Arc<dyn Store>,
}

/// The REST API as a [`Role`]. Binds on `start`; `local_addr` tells the
/// bound address (useful with port 0).
pub struct ApiServer {
    listen: SocketAddr,
    store: Arc<dyn Store>,
    bound: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl ApiServer {
    pub fn new(listen: SocketAddr, store: Arc<dyn Store>) -> Self {
        ApiServer { listen, store, bound: None, shutdown: CancellationToken::new(), task: None }
    }

    /// The address the server listens on, once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.bound
    }
}

/// The API's routes, without a listener (tests drive it in-process too).
fn router(store: Arc<dyn Store>) -> Router {
    Router::new().route("/api/v1/health", get(health)).with_state(AppState { store })
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    database: String,
}

/// Healthy means the database answers: without it the API can do nothing.
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, Json(Health { status: "ok", database: "ok".into() })),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health { status: "unavailable", database: e.to_string() }),
        ),
    }
}

#[async_trait]
impl Role for ApiServer {
    fn name(&self) -> &'static str {
        "api"
    }

    async fn start(&mut self) -> Result<(), RoleError> {
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|e| format!("api: cannot listen on {}: {e}", self.listen))?;
        let bound = listener.local_addr()?;
        self.bound = Some(bound);
        let app = router(self.store.clone());
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
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn health_reports_the_database_and_the_server_stops() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db").to_str().unwrap(), PoolOptions::sized(1))
            .await
            .unwrap();
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
