//! The API's one error type. Every failure, ours or axum's, leaves as
//! `{"error": {"code", "message", "field"?}}` with the status its
//! [`ErrorCode`] maps to; nothing else decides a status code for an error.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_spec::DocumentError;
use sluice_storage::StoreError;

use crate::types::{ErrorBody, ErrorDetail};

/// Stable, machine-readable error codes, each with one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidInput,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidInput => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A failed request: what went wrong, for people, and with which input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Path of the offending input (`tasks[1].retires`, `start_tasks[0]`,
    /// `state`), when one input is to blame.
    pub field: Option<String>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), field: None }
    }

    /// Invalid input at `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { code: ErrorCode::InvalidInput, message: message.into(), field: Some(field.into()) }
    }

    /// Invalid input that no single field is to blame for.
    pub fn invalid_body(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Conflict, message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: self.code.as_str().to_owned(), message: self.message.clone(), field: self.field.clone() } }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {field}: {}", self.code.as_str(), self.message),
            None => write!(f, "{}: {}", self.code.as_str(), self.message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code.status().is_client_error() {
            tracing::debug!(code = self.code.as_str(), field = self.field.as_deref(), message = %self.message, "request refused");
        }
        (self.code.status(), Json(self.body())).into_response()
    }
}

impl From<DocumentError> for ApiError {
    fn from(error: DocumentError) -> Self {
        ApiError { code: ErrorCode::InvalidInput, message: error.message, field: error.field }
    }
}

/// Callers that can say better (e.g. "project `x` already exists") map
/// the store's `Conflict` and `NotFound` themselves; this is the fallback.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Conflict(message) => ApiError::conflict(message),
            StoreError::Fenced { .. } => ApiError::conflict(error.to_string()),
            e if e.is_retryable() => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::new(ErrorCode::Unavailable, format!("{e}; try again later"))
            }
            e => {
                // Details (SQL, row contents) go to the log, not to clients.
                tracing::error!(error = %e, "storage failure");
                ApiError::new(ErrorCode::Internal, "internal error (the server log has the details)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_status() {
        let cases = [
            (ErrorCode::InvalidInput, 400, "invalid_input"),
            (ErrorCode::NotFound, 404, "not_found"),
            (ErrorCode::MethodNotAllowed, 405, "method_not_allowed"),
            (ErrorCode::Conflict, 409, "conflict"),
            (ErrorCode::PayloadTooLarge, 413, "payload_too_large"),
            (ErrorCode::UnsupportedMediaType, 415, "unsupported_media_type"),
            (ErrorCode::Unavailable, 503, "unavailable"),
            (ErrorCode::Internal, 500, "internal"),
        ];
        for (code, status, text) in cases {
            assert_eq!((code.status().as_u16(), code.as_str()), (status, text));
        }
    }

    #[test]
    fn store_errors_map_to_codes() {
        let cases = [
            (StoreError::NotFound("workflow 3".into()), ErrorCode::NotFound),
            (StoreError::Conflict("dup".into()), ErrorCode::Conflict),
            (StoreError::Unavailable("connection refused".into()), ErrorCode::Unavailable),
            (StoreError::Database("syntax error near SELECT".into()), ErrorCode::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(ApiError::from(error).code, code);
        }
        let internal = ApiError::from(StoreError::Database("syntax error near SELECT".into()));
        assert!(!internal.message.contains("SELECT"), "internals leaked: {}", internal.message);
    }

    #[test]
    fn document_errors_keep_their_path() {
        let error = ApiError::from(DocumentError { field: Some("tasks[1].retires".into()), message: "unknown field".into() });
        let body = serde_json::to_value(error.body()).unwrap();
        assert_eq!(body, serde_json::json!({"error": {"code": "invalid_input", "message": "unknown field", "field": "tasks[1].retires"}}));
    }
}
