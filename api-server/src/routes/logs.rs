//! Task logs: a page at a time, followed live (Server-Sent Events), or
//! downloaded whole. See [`crate::logs`] for where they are read.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use sluice_domain::{TaskInstance, TaskInstanceId};
use sluice_logs::MAX_PAGE_LINES;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{PathParams, QueryParams};
use crate::logs::LogTarget;
use crate::types::{ErrorBody, LogQuery, LogStreamQuery, TaskLogPage};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_log)).routes(routes!(stream_log)).routes(routes!(download_log))
}

#[derive(Deserialize)]
struct IdPath {
    id: i64,
}

/// Lines per page unless asked otherwise.
const DEFAULT_LIMIT: usize = 1000;

fn number<T: std::str::FromStr>(field: &str, value: Option<&str>, what: &str) -> ApiResult<Option<T>> {
    value.map(|v| v.parse::<T>().map_err(|_| ApiError::invalid(field, format!("got `{v}`, expected {what}")))).transpose()
}

/// The task and the attempt asked for (default: its current one).
async fn target(state: &AppState, id: i64, attempt: Option<&str>) -> ApiResult<(TaskInstance, LogTarget)> {
    let attempt: Option<u32> = number("attempt", attempt, "an attempt number (1 or more)")?;
    let task = state.store.task_instance(TaskInstanceId(id)).await?.ok_or_else(|| ApiError::not_found(format!("task instance {id} not found")))?;
    let attempt = attempt.unwrap_or(task.attempt);
    if attempt == 0 || attempt > task.attempt {
        return Err(ApiError::invalid(
            "attempt",
            format!("task instance {id} has attempts 1 to {}, not {attempt}", task.attempt),
        ));
    }
    let target = LogTarget::new(&task, attempt);
    Ok((task, target))
}

fn offset(value: Option<&str>) -> ApiResult<u64> {
    Ok(number("offset", value, "a next_offset from an earlier page, or 0")?.unwrap_or(0))
}

/// A page of a task attempt's log: whole lines from `offset`, and where
/// the next page starts.
///
/// Lines look like `2026-11-21T10:00:00.123Z [out] text` (the task's
/// stdout and stderr, in order) or `… [sluice] text` (the worker's own:
/// parameters, command line, exit code, duration, kill reason). Read from
/// the worker that ran the attempt, else from the log store.
#[utoipa::path(
    get,
    path = "/task-instances/{id}/log",
    tag = "logs",
    params(("id" = i64, Path, description = "Task instance id"), LogQuery),
    responses(
        (status = 200, description = "A page; pass `next_offset` as `offset` for the next", body = TaskLogPage),
        (status = 400, description = "Bad attempt, offset or limit; `field` names it", body = ErrorBody),
        (status = 404, description = "No such task instance, or nobody has its log", body = ErrorBody),
    )
)]
async fn get_log(
    State(state): State<AppState>,
    PathParams(IdPath { id }): PathParams<IdPath>,
    QueryParams(query): QueryParams<LogQuery>,
) -> ApiResult<Json<TaskLogPage>> {
    let offset = offset(query.offset.as_deref())?;
    let limit: usize = number("limit", query.limit.as_deref(), &format!("a number of lines, 1 to {MAX_PAGE_LINES}"))?.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_PAGE_LINES {
        return Err(ApiError::invalid("limit", format!("got {limit}, expected 1 to {MAX_PAGE_LINES}")));
    }
    let (task, target) = target(&state, id, query.attempt.as_deref()).await?;
    let sourced = state.logs.page(&target, offset, limit).await?;
    Ok(Json(TaskLogPage {
        task_instance_id: task.id.get(),
        attempt: target.key.attempt,
        lines: sourced.page.lines,
        next_offset: sourced.page.next_offset,
        finished: sourced.page.finished,
        source: sourced.source.to_owned(),
    }))
}

/// Follow a task attempt's log live, as Server-Sent Events: one `line`
/// event per line (data: the line), then one `end` event (data:
/// `{"next_offset": N}`) once the attempt is over and every line was sent;
/// an `error` event (data: the message) if the log became unreadable. A
/// finished attempt's log is sent whole, then `end`.
#[utoipa::path(
    get,
    path = "/task-instances/{id}/log/stream",
    tag = "logs",
    params(("id" = i64, Path, description = "Task instance id"), LogStreamQuery),
    responses(
        (status = 200, description = "`text/event-stream`: `line` events, then `end`", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad attempt or offset; `field` names it", body = ErrorBody),
        (status = 404, description = "No such task instance, or nobody has its log", body = ErrorBody),
    )
)]
async fn stream_log(
    State(state): State<AppState>,
    PathParams(IdPath { id }): PathParams<IdPath>,
    QueryParams(query): QueryParams<LogStreamQuery>,
) -> ApiResult<Response> {
    let offset = offset(query.offset.as_deref())?;
    let (_, target) = target(&state, id, query.attempt.as_deref()).await?;
    let pages = state.logs.follow(target, offset).await?;
    let events = pages.flat_map(|page| {
        let events: Vec<Result<Event, Infallible>> = match page {
            Ok(page) => {
                let mut events: Vec<_> = page.lines.iter().map(|line| Ok(Event::default().event("line").data(line))).collect();
                if page.finished {
                    events.push(Ok(Event::default().event("end").data(serde_json::json!({"next_offset": page.next_offset}).to_string())));
                }
                events
            }
            Err(error) => vec![Ok(Event::default().event("error").data(error.message))],
        };
        futures::stream::iter(events)
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// Download a task attempt's whole log as a text file.
#[utoipa::path(
    get,
    path = "/task-instances/{id}/log/download",
    tag = "logs",
    params(("id" = i64, Path, description = "Task instance id"), LogStreamQuery),
    responses(
        (status = 200, description = "The log file (as much as is written, for a running attempt)", content_type = "text/plain", body = String),
        (status = 400, description = "Bad attempt; `field` names it", body = ErrorBody),
        (status = 404, description = "No such task instance, or nobody has its log", body = ErrorBody),
    )
)]
async fn download_log(
    State(state): State<AppState>,
    PathParams(IdPath { id }): PathParams<IdPath>,
    QueryParams(query): QueryParams<LogStreamQuery>,
) -> ApiResult<Response> {
    if query.offset.is_some() {
        return Err(ApiError::invalid("offset", "a download is always the whole log"));
    }
    let (task, target) = target(&state, id, query.attempt.as_deref()).await?;
    let attempt = target.key.attempt;
    let body = state.logs.download(target).await?;
    let name = format!("attachment; filename=\"task-{}-attempt-{attempt}.log\"", task.id);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, name)],
        Body::from_stream(body),
    )
        .into_response())
}
