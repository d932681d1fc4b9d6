//! Where the API reads task logs: the worker that ran the attempt (over
//! gRPC, with a short connect timeout), else the log store, which has
//! every finished attempt's log even when its worker is gone. Nothing here
//! holds more than a page of a log.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use sluice_domain::TaskInstance;
use sluice_logs::{LogError, LogKey, LogStore, MAX_PAGE_LINES};
use sluice_proto::v1::worker_service_client::WorkerServiceClient;
use sluice_proto::v1::{LogPage, ReadLogRequest};
use tonic::transport::{Channel, Endpoint};

use crate::error::{ApiError, ApiResult, ErrorCode};

/// How long the API waits to reach a worker before using the store.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one page may take from a reachable worker.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which log, and who has it.
#[derive(Clone)]
pub(crate) struct LogTarget {
    pub key: LogKey,
    /// The worker of the task's current attempt (the one that may still
    /// have an older attempt's log too).
    pub host: Option<String>,
    pub description: String,
    /// Of an attempt that ended without reaching a worker: the one line
    /// its log is when nobody wrote one (a skipped task, the kills of a
    /// stop or of an instance that cannot be loaded), from its reason.
    never_ran: Option<String>,
}

impl LogTarget {
    pub fn new(task: &TaskInstance, attempt: u32) -> LogTarget {
        LogTarget {
            key: LogKey { workflow_instance_id: task.workflow_instance_id.get(), task_instance_id: task.id.get(), attempt },
            host: task.host.clone(),
            description: format!("task instance {} (`{}`) attempt {attempt}", task.id, task.name),
            never_ran: never_ran(task, attempt),
        }
    }

    /// The log of an attempt that never ran and that nobody wrote, at
    /// `offset`: its one line, then the end.
    fn recorded(&self, offset: u64) -> Option<ApiResult<LogPage>> {
        let line = self.never_ran.as_ref()?;
        let end = line.len() as u64 + 1;
        Some(match offset {
            0 => Ok(LogPage { lines: vec![line.clone()], next_offset: end, finished: true }),
            at if at == end => Ok(LogPage { lines: Vec::new(), next_offset: end, finished: true }),
            at => Err(bad_offset(format!("offset {at} is not a line start of this log (0 or {end})"))),
        })
    }

    fn request(&self, offset: u64, limit: usize) -> ReadLogRequest {
        ReadLogRequest {
            workflow_instance_id: self.key.workflow_instance_id,
            task_instance_id: self.key.task_instance_id,
            attempt: self.key.attempt,
            offset,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        }
    }

    fn missing(&self) -> ApiError {
        let worker = match &self.host {
            Some(host) => format!("its worker {host} does not have it or cannot be reached"),
            None => "it has not run on a worker".to_owned(),
        };
        ApiError::not_found(format!("no log for {}: {worker}, and the log store has no copy", self.description))
    }
}

fn never_ran(task: &TaskInstance, attempt: u32) -> Option<String> {
    let ended_unstarted = task.state.is_final() && task.host.is_none() && task.start_time.is_none() && attempt == task.attempt;
    let reason = task.message.as_deref().filter(|_| ended_unstarted)?;
    let at = task.end_time.unwrap_or(task.updated_at);
    let text = format!("{} without running: {reason}", task.state);
    let line = sluice_logs::format_line(at, sluice_logs::Source::Sluice, text.as_bytes());
    Some(line.trim_end_matches('\n').to_owned())
}

/// A page of a log, wherever it came from.
pub(crate) struct SourcedPage {
    pub page: LogPage,
    /// `worker` or `store`.
    pub source: &'static str,
}

pub(crate) type PageStream = Pin<Box<dyn Stream<Item = ApiResult<LogPage>> + Send>>;

#[derive(Clone, Default)]
pub(crate) struct LogAccess {
    store: Option<Arc<dyn LogStore>>,
}

fn bad_offset(message: String) -> ApiError {
    ApiError::invalid("offset", message)
}

fn store_error(error: LogError) -> ApiError {
    match error {
        LogError::BadOffset { .. } => bad_offset(error.to_string()),
        LogError::Io { .. } => {
            tracing::error!(%error, "cannot read the log store");
            ApiError::new(ErrorCode::Internal, "cannot read the log store (the server log has the details)")
        }
    }
}

impl LogAccess {
    pub fn new(store: Option<Arc<dyn LogStore>>) -> Self {
        LogAccess { store }
    }

    async fn worker(&self, target: &LogTarget) -> Option<WorkerServiceClient<Channel>> {
        let host = target.host.as_deref()?;
        let endpoint = Endpoint::from_shared(format!("http://{host}")).ok()?.connect_timeout(CONNECT_TIMEOUT);
        match endpoint.connect().await {
            Ok(channel) => Some(WorkerServiceClient::new(channel)),
            Err(error) => {
                tracing::debug!(%host, %error, "worker unreachable; reading the log store");
                None
            }
        }
    }

    /// `Some` answer of the worker, `None` to try the store.
    fn worker_answer<T>(target: &LogTarget, answer: Result<T, tonic::Status>) -> ApiResult<Option<T>> {
        match answer {
            Ok(value) => Ok(Some(value)),
            Err(status) if status.code() == tonic::Code::InvalidArgument => Err(bad_offset(status.message().to_owned())),
            Err(status) => {
                if status.code() != tonic::Code::NotFound {
                    tracing::warn!(host = ?target.host, code = ?status.code(), message = status.message(), "worker could not serve a log; reading the log store");
                }
                Ok(None)
            }
        }
    }

    /// A page of up to `limit` lines from `offset`.
    pub async fn page(&self, target: &LogTarget, offset: u64, limit: usize) -> ApiResult<SourcedPage> {
        if let Some(mut client) = self.worker(target).await {
            let mut request = tonic::Request::new(target.request(offset, limit));
            request.set_timeout(PAGE_TIMEOUT);
            if let Some(reply) = Self::worker_answer(target, client.read_log(request).await)? {
                return Ok(SourcedPage { page: reply.into_inner(), source: "worker" });
            }
        }
        let stored = match &self.store {
            Some(store) => store.read(&target.key, offset, limit).await.map_err(store_error)?,
            None => None,
        };
        match stored {
            // The store only has logs of attempts that are over.
            Some(page) => Ok(SourcedPage { page: LogPage { lines: page.lines, next_offset: page.next_offset, finished: page.at_end }, source: "store" }),
            None => match target.recorded(offset) {
                Some(page) => Ok(SourcedPage { page: page?, source: "reason" }),
                None => Err(target.missing()),
            },
        }
    }

    /// The log from `offset`, then its new lines as they are written,
    /// ending with a `finished` page. If the worker goes away part-way,
    /// the rest comes from the store (there once the attempt is over).
    pub async fn follow(&self, target: LogTarget, offset: u64) -> ApiResult<PageStream> {
        if let Some(mut client) = self.worker(&target).await {
            if let Some(stream) = Self::worker_answer(&target, client.follow_log(target.request(offset, 0)).await)? {
                let access = self.clone();
                let stream = futures::stream::unfold(
                    (Some(stream.into_inner()), offset, access, target, false),
                    |(mut worker, mut offset, access, target, done)| async move {
                        if done {
                            return None;
                        }
                        if let Some(stream) = worker.as_mut() {
                            match stream.message().await {
                                Ok(Some(page)) => {
                                    offset = page.next_offset;
                                    let done = page.finished;
                                    return Some((Ok(page), (worker, offset, access, target, done)));
                                }
                                Ok(None) | Err(_) => {
                                    tracing::debug!(host = ?target.host, "worker log stream ended early; reading the log store");
                                }
                            }
                        }
                        // The worker is gone: what the store has, or an error.
                        let next = access.store_page(&target, offset).await;
                        let done = next.as_ref().map_or(true, |p| p.finished);
                        Some((next, (None, offset, access, target, done)))
                    },
                );
                return Ok(Box::pin(stream));
            }
        }
        // The first page checks that the store has the log at all.
        let first = self.store_page(&target, offset).await?;
        let access = self.clone();
        let stream = futures::stream::unfold((Some(first), access, target), |(first, access, target)| async move {
            let page = first?;
            let next = if page.finished {
                None
            } else {
                match access.store_page(&target, page.next_offset).await {
                    Ok(next) => Some(next),
                    Err(error) => return Some((Err(error), (None, access, target))),
                }
            };
            Some((Ok(page), (next, access, target)))
        });
        Ok(Box::pin(stream))
    }

    async fn store_page(&self, target: &LogTarget, offset: u64) -> ApiResult<LogPage> {
        Ok(self.page(&LogTarget { host: None, ..target.clone() }, offset, MAX_PAGE_LINES).await?.page)
    }

    /// The whole log as bytes: the store's file as it is, or the worker's
    /// lines a page at a time (as much as is written, for a running attempt).
    pub async fn download(&self, target: LogTarget) -> ApiResult<Pin<Box<dyn Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send>>> {
        if let Some(mut client) = self.worker(&target).await {
            if let Some(first) = Self::worker_answer(&target, client.read_log(target.request(0, MAX_PAGE_LINES)).await)? {
                let stream = futures::stream::unfold((Some(first.into_inner()), client, target), |(page, mut client, target)| async move {
                    let page = page?;
                    let next = if page.finished || page.lines.is_empty() {
                        None
                    } else {
                        match client.read_log(target.request(page.next_offset, MAX_PAGE_LINES)).await {
                            Ok(next) => Some(next.into_inner()),
                            Err(status) => {
                                return Some((Err(std::io::Error::other(status.message().to_owned())), (None, client, target)));
                            }
                        }
                    };
                    let mut bytes = page.lines.join("\n").into_bytes();
                    if !page.lines.is_empty() {
                        bytes.push(b'\n');
                    }
                    Some((Ok(axum::body::Bytes::from(bytes)), (next, client, target)))
                });
                return Ok(Box::pin(stream));
            }
        }
        let opened = match &self.store {
            Some(store) => store.open(&target.key).await.map_err(store_error)?,
            None => None,
        };
        match (opened, &target.never_ran) {
            (Some((_, reader)), _) => Ok(Box::pin(tokio_util::io::ReaderStream::new(reader))),
            (None, Some(line)) => Ok(Box::pin(futures::stream::once(std::future::ready(Ok(axum::body::Bytes::from(format!("{line}\n"))))))),
            (None, None) => Err(target.missing()),
        }
    }
}
