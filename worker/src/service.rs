//! The worker's gRPC service: what masters (kills) and API servers (logs)
//! ask of a worker.

use std::path::PathBuf;
use std::sync::Arc;

use sluice_domain::TaskInstanceId;
use sluice_logs::{LogKey, MAX_PAGE_LINES};
use sluice_proto::v1::worker_service_server::WorkerService;
use sluice_proto::v1::{KillTaskReply, KillTaskRequest, LogPage, ReadLogRequest};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::logs::{self, LiveLogs, ServeError};
use crate::running::{Running, StopCause, TaskAttempt};

pub(crate) struct WorkerApi {
    pub(crate) running: Arc<Running>,
    pub(crate) logs: Arc<LiveLogs>,
    pub(crate) log_dir: PathBuf,
}

fn log_key(request: &ReadLogRequest) -> LogKey {
    LogKey {
        workflow_instance_id: request.workflow_instance_id,
        task_instance_id: request.task_instance_id,
        attempt: request.attempt,
    }
}

fn status(key: &LogKey, error: ServeError) -> Status {
    match error {
        ServeError::NotFound => Status::not_found(format!("no log for {key} on this worker")),
        ServeError::BadOffset(message) => Status::invalid_argument(message),
        ServeError::Io(message) => Status::internal(message),
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    /// Answers as soon as the kill is under way; the attempt's `KILLED`
    /// event follows once its process group is gone.
    async fn kill_task(
        &self,
        request: Request<KillTaskRequest>,
    ) -> Result<Response<KillTaskReply>, Status> {
        let request = request.into_inner();
        let attempt = TaskAttempt {
            task_instance_id: TaskInstanceId(request.task_instance_id),
            attempt: request.attempt,
        };
        let found = self
            .running
            .stop(attempt, StopCause::Kill(request.reason.clone()));
        info!(task_instance = request.task_instance_id, attempt = request.attempt, reason = %request.reason, found, "kill requested");
        Ok(Response::new(KillTaskReply { found }))
    }

    async fn read_log(&self, request: Request<ReadLogRequest>) -> Result<Response<LogPage>, Status> {
        let request = request.into_inner();
        let key = log_key(&request);
        let limit = (request.limit as usize).clamp(1, MAX_PAGE_LINES);
        logs::read(&self.logs, &self.log_dir, &key, request.offset, limit)
            .await
            .map(Response::new)
            .map_err(|error| status(&key, error))
    }

    type FollowLogStream = ReceiverStream<Result<LogPage, Status>>;

    async fn follow_log(&self, request: Request<ReadLogRequest>) -> Result<Response<Self::FollowLogStream>, Status> {
        let request = request.into_inner();
        let key = log_key(&request);
        // Refused before the stream starts, so that callers can fall back.
        if self.logs.get(&key).is_none() && !self.log_dir.join(key.relative_path()).is_file() {
            return Err(status(&key, ServeError::NotFound));
        }
        // A few pages in flight at most: a slow reader slows the reading.
        let (out, pages) = tokio::sync::mpsc::channel(2);
        let (live, log_dir) = (self.logs.clone(), self.log_dir.clone());
        tokio::spawn(async move { logs::follow(&live, &log_dir, key, request.offset, out).await });
        Ok(Response::new(ReceiverStream::new(pages)))
    }
}
