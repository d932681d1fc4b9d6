//! The master's gRPC service: task events from workers, and the
//! dispatches of the attempts they take.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use sluice_domain::{TaskInstanceId, WorkflowInstance, WorkflowInstanceId};
use sluice_proto::v1::master_service_server::MasterService;
use sluice_proto::v1::task_event_request::Event;
use sluice_proto::v1::fetch_task_reply::Answer;
use sluice_proto::v1::{CheckAttemptsReply, CheckAttemptsRequest, FetchTaskReply, FetchTaskRequest, TaskEventReply, TaskEventRequest, TaskOutcome};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::driver::DriverMsg;
use crate::run::{Fetched, Finished, Outcome, Report, TaskReport};
use crate::Shared;

/// A worker's event as the run machine reads it: decoded once, here.
/// `None` for an event without content (a newer worker's kind).
fn report_of(event: TaskEventRequest) -> Option<TaskReport> {
    let report = match event.event? {
        Event::Running(running) => Report::Running { pid: running.pid, log_path: running.log_path },
        Event::Finished(finished) => Report::Finished(Finished {
            outcome: match TaskOutcome::try_from(finished.outcome) {
                Ok(TaskOutcome::Success) => Outcome::Success,
                Ok(TaskOutcome::Killed) => Outcome::Killed,
                _ => Outcome::Failure,
            },
            exit_code: finished.exit_code,
            reason: finished.reason,
            outputs: finished.outputs.into_iter().collect(),
        }),
        Event::TimeoutWarning(warning) => Report::TimeoutWarning { timeout_ms: warning.timeout_ms },
        Event::ExternalId(external) => Report::ExternalId(external.id),
    };
    Some(TaskReport {
        task_instance_id: TaskInstanceId(event.task_instance_id),
        attempt: event.attempt,
        worker: event.worker,
        at: Utc.timestamp_millis_opt(event.event_time_ms).single().unwrap_or_else(Utc::now),
        report,
    })
}

pub(crate) struct MasterRpc {
    shared: Arc<Shared>,
}

impl MasterRpc {
    pub fn new(shared: Arc<Shared>) -> Self {
        MasterRpc { shared }
    }

    /// The instance of `task`'s attempt `attempt` while that attempt can
    /// still matter: it is the task's current attempt, not over, of an
    /// instance that is not over (and is `instance`, when the caller knows
    /// which it must be). `None` when it is stale.
    async fn live_attempt(&self, instance: Option<WorkflowInstanceId>, task: TaskInstanceId, attempt: u32) -> Result<Option<WorkflowInstance>, Status> {
        let unavailable = |e: sluice_storage::StoreError| Status::unavailable(e.to_string());
        let store = &self.shared.store;
        let Some(task) = store.task_instance(task).await.map_err(unavailable)? else { return Ok(None) };
        if instance.is_some_and(|id| id != task.workflow_instance_id) || task.attempt != attempt || task.state.is_final() {
            return Ok(None);
        }
        let instance = store.workflow_instance(task.workflow_instance_id).await.map_err(unavailable)?;
        Ok(instance.filter(|i| !i.state.is_final()))
    }

    /// The instance's owner, if another master.
    fn owner_elsewhere(&self, instance: WorkflowInstance) -> Option<String> {
        instance.owner.filter(|o| *o != self.shared.addr)
    }

    /// An event for an instance this master does not drive: acknowledge it
    /// if it can no longer matter (its attempt or instance is over), so the
    /// worker stops resending; refuse it otherwise, so the worker keeps it
    /// for the instance's real owner.
    async fn event_for_undriven(&self, event: &TaskEventRequest) -> Result<TaskEventReply, Status> {
        let id = WorkflowInstanceId(event.workflow_instance_id);
        let Some(instance) = self.live_attempt(Some(id), TaskInstanceId(event.task_instance_id), event.attempt).await? else {
            return Ok(TaskEventReply { accepted: true, reason: "stale event ignored".into(), owner: String::new() });
        };
        // Point the worker at the owner; if that is this master (it is
        // adopting the instance right now), the worker just resends.
        Ok(TaskEventReply {
            accepted: false,
            reason: format!("master {} does not drive workflow instance {id}", self.shared.addr),
            owner: self.owner_elsewhere(instance).unwrap_or_default(),
        })
    }

    /// A fetch for an instance this master does not drive: stale if the
    /// attempt can no longer run, the owner's address if another master
    /// owns it, UNAVAILABLE if this master owns it and is not driving it
    /// yet (the worker asks again).
    async fn fetch_for_undriven(&self, request: &FetchTaskRequest) -> Result<Answer, Status> {
        let id = WorkflowInstanceId(request.workflow_instance_id);
        let Some(instance) = self.live_attempt(Some(id), TaskInstanceId(request.task_instance_id), request.attempt).await? else {
            return Ok(Answer::Stale(format!(
                "attempt {} of task instance {} is not current (a newer attempt exists, or the task or workflow instance {id} is over)",
                request.attempt, request.task_instance_id
            )));
        };
        match self.owner_elsewhere(instance) {
            Some(owner) => Ok(Answer::Owner(owner)),
            None => Err(Status::unavailable(format!("master {} does not drive workflow instance {id} yet", self.shared.addr))),
        }
    }
}

#[tonic::async_trait]
impl MasterService for MasterRpc {
    async fn fetch_task(&self, request: Request<FetchTaskRequest>) -> Result<Response<FetchTaskReply>, Status> {
        let request = request.into_inner();
        let (id, task) = (WorkflowInstanceId(request.workflow_instance_id), TaskInstanceId(request.task_instance_id));
        if let Some(dispatch) = self.shared.dispatches.fetch(id, task, request.attempt) {
            return Ok(Response::new(FetchTaskReply { answer: Some(Answer::Dispatch(dispatch.to_json())) }));
        }
        let answer = match self.shared.driver(id) {
            Some(driver) => {
                let (reply, replied) = oneshot::channel();
                let asked = driver.send(DriverMsg::Fetch { task, attempt: request.attempt, reply }).is_ok();
                match (asked, replied.await) {
                    (true, Ok(Fetched::Found(dispatch))) => Answer::Dispatch(dispatch.to_json()),
                    (true, Ok(Fetched::Stale(why))) => Answer::Stale(why),
                    // The driver ended meanwhile: the store knows.
                    _ => self.fetch_for_undriven(&request).await?,
                }
            }
            None => self.fetch_for_undriven(&request).await?,
        };
        if let Answer::Stale(why) = &answer {
            tracing::info!(workflow_instance = %id, task_instance = %task, attempt = request.attempt, worker = %request.worker, reason = %why, "fetch of a stale attempt");
        }
        Ok(Response::new(FetchTaskReply { answer: Some(answer) }))
    }

    async fn check_attempts(&self, request: Request<CheckAttemptsRequest>) -> Result<Response<CheckAttemptsReply>, Status> {
        let mut stale = Vec::new();
        for attempt in request.into_inner().attempts {
            // An attempt of an instance that is over runs for nothing.
            if self.live_attempt(None, TaskInstanceId(attempt.task_instance_id), attempt.attempt).await?.is_none() {
                stale.push(attempt);
            }
        }
        Ok(Response::new(CheckAttemptsReply { stale }))
    }

    async fn report_task_event(&self, request: Request<TaskEventRequest>) -> Result<Response<TaskEventReply>, Status> {
        let event = request.into_inner();
        let id = WorkflowInstanceId(event.workflow_instance_id);
        let reply = match self.shared.driver(id) {
            Some(driver) => {
                let (ack, acked) = oneshot::channel();
                let copy = event.clone();
                let Some(report) = report_of(event) else {
                    return Ok(Response::new(TaskEventReply { accepted: true, reason: "empty event ignored".into(), owner: String::new() }));
                };
                if driver.send(DriverMsg::Report { report, ack }).is_err() {
                    self.event_for_undriven(&copy).await?
                } else {
                    match acked.await {
                        Ok(true) => TaskEventReply { accepted: true, reason: String::new(), owner: String::new() },
                        // The driver stopped (shutdown or fenced) before
                        // persisting it: the worker must resend.
                        _ => TaskEventReply { accepted: false, reason: "instance driver stopped".into(), owner: String::new() },
                    }
                }
            }
            None => self.event_for_undriven(&event).await?,
        };
        Ok(Response::new(reply))
    }
}
