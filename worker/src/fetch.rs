//! From a queue entry to the attempt's dispatch. An entry holds a
//! [`QueueTicket`] (the attempt's key and the master that queued it); the
//! script and resolved parameters come from the instance's owner over gRPC,
//! so that they never sit in the registry (secrets; scripts over
//! ZooKeeper's 1 MB node limit). An entry that holds a whole dispatch (a
//! master of an earlier release) is run as it is.
//!
//! The ticket's master may be gone (failed over): a master that does not
//! own the instance names the owner, and after a few failures on the
//! ticket's master every live master is asked (any of them can name the
//! owner from the database). A worker that gets no answer for
//! [`GIVE_UP`] lets the entry go: by then the owner's watchdog has seen
//! the attempt taken and never reported running, and queued a new one.

use std::time::Duration;

use sluice_domain::{QueueTicket, TaskDispatch};
use sluice_proto::v1::fetch_task_reply::Answer;
use sluice_proto::v1::FetchTaskRequest;
use tracing::{debug, info, warn};

use crate::outbox::Pursuit;
use crate::Shared;

/// How long a worker keeps asking (see the module's documentation).
pub(crate) const GIVE_UP: Duration = Duration::from_secs(60);

/// What a queue entry's payload is.
pub(crate) enum Payload {
    Ticket(QueueTicket),
    /// A whole dispatch, from a master of an earlier release.
    Dispatch(TaskDispatch),
}

impl Payload {
    /// A dispatch has every field of a ticket, and a `task_type`: an entry
    /// with one is read as a dispatch (and a garbled one is an error, not a
    /// ticket).
    pub fn decode(raw: &[u8]) -> Result<Payload, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_slice(raw)?;
        if value.get("task_type").is_some() {
            serde_json::from_value(value).map(Payload::Dispatch)
        } else {
            serde_json::from_value(value).map(Payload::Ticket)
        }
    }

    pub fn ticket(&self) -> QueueTicket {
        match self {
            Payload::Ticket(ticket) => ticket.clone(),
            Payload::Dispatch(dispatch) => QueueTicket::of(dispatch),
        }
    }
}

/// Why an attempt taken from a queue does not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotRun {
    /// Its master says it must not (a newer attempt exists, it is over).
    #[error("the master says the attempt is stale: {0}")]
    Stale(String),
    #[error("no master answered for {0:?}: {1}")]
    NoAnswer(Duration, String),
    #[error("the dispatch the master sent is not valid: {0}")]
    Malformed(serde_json::Error),
}

/// The dispatch of `ticket`'s attempt, from its instance's owner.
pub(crate) async fn dispatch(shared: &Shared, ticket: &QueueTicket) -> Result<TaskDispatch, NotRun> {
    let request = FetchTaskRequest {
        workflow_instance_id: ticket.workflow_instance_id.get(),
        task_instance_id: ticket.task_instance_id.get(),
        attempt: ticket.attempt,
        worker: shared.addr.clone(),
    };
    let started = tokio::time::Instant::now();
    let mut pursuit = Pursuit::new(ticket.master.clone());
    let mut last_error = String::from("no master to ask");
    let mut redirects = 0u32;
    let mut warned = false;
    loop {
        let mut redirected = false;
        for to in pursuit.round(&shared.outbox).await {
            let Some(mut client) = shared.outbox.client(&to) else {
                last_error = format!("master address `{to}` is not a valid host:port");
                continue;
            };
            match client.fetch_task(request.clone()).await.map(|r| r.into_inner().answer) {
                Ok(Some(Answer::Dispatch(raw))) => {
                    debug!(master = %to, task_instance = request.task_instance_id, attempt = request.attempt, bytes = raw.len(), "dispatch fetched");
                    return TaskDispatch::from_json(&raw).map_err(NotRun::Malformed);
                }
                Ok(Some(Answer::Stale(why))) => return Err(NotRun::Stale(why)),
                Ok(Some(Answer::Owner(owner))) if owner != pursuit.target() => {
                    info!(from = %to, to = %owner, task_instance = request.task_instance_id, "dispatch fetched from the instance's owner");
                    pursuit.redirect(owner);
                    redirected = true;
                    break;
                }
                Ok(_) => last_error = format!("master {to} gave no answer"),
                Err(status) => {
                    pursuit.answered(&to, false);
                    last_error = format!("{to}: {}", status.message());
                }
            }
        }
        // Straight to a named owner, unless masters keep naming each other.
        if redirected {
            redirects += 1;
            if !redirects.is_multiple_of(4) {
                continue;
            }
        }
        if started.elapsed() >= GIVE_UP {
            return Err(NotRun::NoAnswer(GIVE_UP, last_error));
        }
        if !warned {
            warned = true;
            warn!(task_instance = request.task_instance_id, attempt = request.attempt, error = %last_error, "cannot fetch the dispatch; asking again");
        }
        pursuit.pause().await;
    }
}
