//! The worker's gRPC service: what masters ask of a worker.

use std::sync::Arc;

use sluice_domain::TaskInstanceId;
use sluice_proto::v1::worker_service_server::WorkerService;
use sluice_proto::v1::{KillTaskReply, KillTaskRequest};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::running::{Running, StopCause, TaskAttempt};

pub(crate) struct WorkerApi {
    pub(crate) running: Arc<Running>,
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
}
