//! Extractors whose rejections are [`ApiError`]s, so a bad body, path or
//! query string gets the API's error shape with the offending field named,
//! instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use sluice_spec::WorkflowDocument;

use crate::error::{ApiError, ErrorCode};

/// A JSON body (`Content-Type: application/json`), read with the path of
/// any mistake (`params.dt`, or the unknown key itself).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        require_json(req.headers())?;
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Like [`JsonBody`], but an empty body (with any or no content type)
/// means `T::default()`: `POST …/runs` with nothing to say.
pub struct JsonOrEmpty<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for JsonOrEmpty<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let headers = req.headers().clone();
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonOrEmpty(T::default()));
        }
        require_json(&headers)?;
        parse_json(&bytes).map(JsonOrEmpty)
    }
}

/// A workflow document, YAML or JSON according to its content type.
pub struct WorkflowBody(pub WorkflowDocument);

const YAML_TYPES: &[&str] = &["application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"];
const JSON_TYPE: &str = "application/json";

impl<S: Send + Sync> FromRequest<S> for WorkflowBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let media = media_type(req.headers());
        let yaml = match media.as_deref() {
            Some(JSON_TYPE) => false,
            Some(t) if YAML_TYPES.contains(&t) => true,
            other => return Err(unsupported(other, &[JSON_TYPE, YAML_TYPES[0], YAML_TYPES[1], YAML_TYPES[2]])),
        };
        let bytes = read_body(req, state).await?;
        let text = std::str::from_utf8(&bytes).map_err(|e| ApiError::invalid_body(format!("the body is not UTF-8 text: {e}")))?;
        let document = if yaml { sluice_spec::parse_yaml(text) } else { sluice_spec::parse_json(text) };
        Ok(WorkflowBody(document?))
    }
}

/// Path parameters; a value of the wrong type is named by its key.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParams(value)),
            Err(rejection) => Err(path_error(rejection)),
        }
    }
}

fn path_error(rejection: PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    let PathRejection::FailedToDeserializePathParams(error) = rejection else {
        return ApiError::new(ErrorCode::Internal, rejection.body_text());
    };
    match error.into_kind() {
        ErrorKind::ParseErrorAtKey { key, value, expected_type } => {
            ApiError::invalid(key, format!("expected {}, got `{value}`", describe_type(expected_type)))
        }
        ErrorKind::DeserializeError { key, value, message } => ApiError::invalid(key, format!("invalid value `{value}`: {message}")),
        ErrorKind::InvalidUtf8InPathParam { key } => ApiError::invalid(key, "not valid UTF-8 once percent-decoded"),
        ErrorKind::ParseError { value, expected_type } | ErrorKind::ParseErrorAtIndex { value, expected_type, .. } => {
            ApiError::invalid_body(format!("path parameter: expected {}, got `{value}`", describe_type(expected_type)))
        }
        other => ApiError::new(ErrorCode::Internal, format!("path parameters: {other}")),
    }
}

fn describe_type(rust_type: &str) -> &'static str {
    match rust_type {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => "a whole number",
        "bool" => "true or false",
        _ => "a different kind of value",
    }
}

/// Query-string parameters. Structs read with it take every field as text
/// (parsed and checked by the handler's conversion, which names the field)
/// and deny unknown keys, so the failures here are unknown or repeated keys.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(pairs) = axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::invalid_body(format!("query string: {}", rejection.body_text())))?;
        let mut fields = serde_json::Map::new();
        for (key, value) in pairs {
            if fields.insert(key.clone(), serde_json::Value::String(value)).is_some() {
                return Err(ApiError::invalid(key, "given more than once"));
            }
        }
        serde_path_to_error::deserialize(serde_json::Value::Object(fields)).map(QueryParams).map_err(data_error)
    }
}

/// The key serde names in "unknown field `x`", "missing field `x`" and
/// "duplicate field `x`" messages.
fn field_in_message(message: &str) -> Option<String> {
    ["unknown field `", "missing field `", "duplicate field `"].iter().find_map(|prefix| {
        let rest = message.strip_prefix(prefix)?;
        rest.split_once('`').map(|(name, _)| name.to_owned())
    })
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

fn unsupported(got: Option<&str>, accepted: &[&str]) -> ApiError {
    let got = match got {
        Some(t) => format!("content type `{t}`"),
        None => "no content type".to_owned(),
    };
    ApiError {
        code: ErrorCode::UnsupportedMediaType,
        message: format!("{got} is not accepted; send one of: {}", accepted.join(", ")),
        field: None,
    }
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match media_type(headers).as_deref() {
        Some(JSON_TYPE) => Ok(()),
        other => Err(unsupported(other, &[JSON_TYPE])),
    }
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection: BytesRejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge, rejection.body_text())
        } else {
            ApiError::invalid_body(format!("cannot read the body: {}", rejection.body_text()))
        }
    })
}

/// Reads JSON, naming the field of a type mistake or an unknown key by its
/// path (`params.dt`, `scope`); syntax errors name no field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|error| {
        if error.inner().is_syntax() || error.inner().is_eof() {
            return ApiError::invalid_body(format!("malformed JSON: {}", error.inner()));
        }
        data_error(error)
    })?;
    de.end().map_err(|e| ApiError::invalid_body(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// A value of the wrong shape, named by its path.
fn data_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let message = error.into_inner().to_string();
    // The path of an unknown key already ends with it; that of a
    // missing one is its parent's.
    let field = match (field_in_message(&message), path.as_str()) {
        (Some(name), ".") => Some(name),
        (Some(name), at) if at == name || at.ends_with(&format!(".{name}")) => Some(at.to_owned()),
        (Some(name), parent) => Some(format!("{parent}.{name}")),
        (None, ".") => None,
        (None, at) => Some(at.to_owned()),
    };
    ApiError { code: ErrorCode::InvalidInput, message, field }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{CreateProject, RunRequest};

    #[test]
    fn json_mistakes_name_their_field() {
        let e = parse_json::<RunRequest>(br#"{"dry_run": true, "priorty": "high"}"#).unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidInput, Some("priorty")));
        assert!(e.message.starts_with("unknown field `priorty`"), "{}", e.message);
        let e = parse_json::<RunRequest>(br#"{"params": {"dt": 3}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.dt"));
        let e = parse_json::<CreateProject>(br#"{"description": "x"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("name"));
        let e = parse_json::<RunRequest>(br#"{"params": {}, "start_tasks": ["a", 3]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("start_tasks[1]"));
        let e = parse_json::<CreateProject>(br#"{"name": "x""#).unwrap_err();
        assert_eq!(e.field, None);
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        let e = parse_json::<CreateProject>(br#"{"name": "x"} trailing"#).unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
    }
}
