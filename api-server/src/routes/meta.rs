//! Health, the OpenAPI document and its docs page, and the answers for
//! unknown routes and methods.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::types::Health;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// Whether the API serves: healthy means its database answers.
///
/// Without the database the API can do nothing, so 503 then.
#[utoipa::path(
    get,
    path = "/health",
    tag = "meta",
    responses((status = 200, description = "Serving", body = Health), (status = 503, description = "The database does not answer", body = Health))
)]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, Json(Health { status: "ok".into(), database: "ok".into() })),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "unavailable".into(), database: e.to_string() }))
        }
    }
}

/// The OpenAPI document, rendered once at start-up.
pub(crate) fn openapi_json(document: Arc<String>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document.as_str().to_owned())
}

/// A self-contained page that reads `openapi.json` and lists the operations
/// (no assets from elsewhere: servers here often have no internet).
pub(crate) async fn docs_page() -> Html<&'static str> {
    Html(include_str!("../docs.html"))
}

pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, format!("{method} is not supported on {}", uri.path()))
}
