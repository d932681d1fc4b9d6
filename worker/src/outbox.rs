//! Reliable delivery of task events to masters.
//!
//! A master persists every state change a worker reports, so an event that
//! is lost is a task that looks stuck forever. Events therefore go into an
//! in-memory outbox per master address, and one sender per master delivers
//! them in order, resending each (with backoff) until the master accepts it.
//! Delivery is at least once: the master ignores repeats. Task runners only
//! ever enqueue, so a master that is down or slow never holds a task up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_proto::v1::master_service_client::MasterServiceClient;
use sluice_proto::v1::TaskEventRequest;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, error, info, warn};

/// Waits between delivery attempts of one event: short at first (a master
/// restarting is back in moments), capped so a long outage costs little.
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(2);
/// Bounds one delivery attempt, so a master that hangs is retried like one
/// that is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Outbox {
    /// `None` once closed.
    senders: Mutex<Option<HashMap<String, Sender>>>,
    /// Events enqueued and not yet accepted, over all masters.
    pending: watch::Sender<usize>,
}

struct Sender {
    events: mpsc::UnboundedSender<TaskEventRequest>,
    task: JoinHandle<()>,
}

impl Outbox {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Outbox {
            senders: Mutex::new(Some(HashMap::new())),
            pending: watch::channel(0).0,
        })
    }

    /// Queues `event` for `master`; returns at once.
    pub(crate) fn send(self: &Arc<Self>, master: &str, event: TaskEventRequest) {
        let mut senders = self
            .senders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(senders) = senders.as_mut() else {
            warn!(%master, task_instance = event.task_instance_id, attempt = event.attempt, "worker stopped; task event dropped");
            return;
        };
        let sender = senders.entry(master.to_owned()).or_insert_with(|| {
            let (events, queue) = mpsc::unbounded_channel();
            let task = tokio::spawn(deliver(self.clone(), master.to_owned(), queue));
            Sender { events, task }
        });
        self.pending.send_modify(|n| *n += 1);
        // The receiver lives as long as the sender task, which only ends
        // when this sender is dropped (or aborted by `close`, which also
        // removes this entry under the same lock).
        let _ = sender.events.send(event);
    }

    /// Events not yet accepted by their master.
    pub(crate) fn pending(&self) -> usize {
        *self.pending.borrow()
    }

    /// Resolves once every event enqueued so far has been accepted.
    pub(crate) async fn flushed(&self) {
        let mut pending = self.pending.subscribe();
        let _ = pending.wait_for(|n| *n == 0).await;
    }

    /// Stops every sender; returns how many events were never delivered.
    pub(crate) fn close(&self) -> usize {
        let senders: Vec<Sender> = {
            let mut senders = self
                .senders
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            senders
                .take()
                .map(|map| map.into_values().collect())
                .unwrap_or_default()
        };
        for sender in senders {
            sender.task.abort();
        }
        self.pending()
    }

    fn delivered(&self) {
        self.pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The sender of one master: delivers its events one at a time, in order.
async fn deliver(
    outbox: Arc<Outbox>,
    master: String,
    mut queue: mpsc::UnboundedReceiver<TaskEventRequest>,
) {
    let client = match Endpoint::from_shared(format!("http://{master}")) {
        Ok(endpoint) => MasterServiceClient::new(
            endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .connect_lazy(),
        ),
        Err(e) => {
            // No retry can fix an address that does not parse: drop what
            // comes, loudly, rather than hold the worker's stop for it.
            error!(%master, error = %e, "master address is not a valid host:port; dropping its task events");
            while let Some(event) = queue.recv().await {
                error!(%master, task_instance = event.task_instance_id, attempt = event.attempt, "task event dropped");
                outbox.delivered();
            }
            return;
        }
    };
    while let Some(event) = queue.recv().await {
        deliver_one(&client, &master, event).await;
        outbox.delivered();
    }
}

async fn deliver_one(client: &MasterServiceClient<Channel>, master: &str, event: TaskEventRequest) {
    let mut wait = FIRST_RETRY;
    let mut failures = 0u32;
    loop {
        // Cloning the client is cheap (it shares the channel) and needed
        // because a call takes it mutably.
        match client.clone().report_task_event(event.clone()).await {
            Ok(reply) if reply.get_ref().accepted => {
                if failures > 0 {
                    info!(%master, task_instance = event.task_instance_id, attempt = event.attempt, failures, "task event delivered after retries");
                } else {
                    debug!(%master, task_instance = event.task_instance_id, attempt = event.attempt, "task event delivered");
                }
                return;
            }
            Ok(reply) => {
                // Kept: a failover will make some master the owner, and a
                // later issue redirects the event to it.
                let reason = &reply.get_ref().reason;
                if failures == 0 {
                    warn!(%master, task_instance = event.task_instance_id, attempt = event.attempt, %reason, "master refused task event; will resend");
                }
            }
            Err(status) => {
                if failures == 0 {
                    warn!(%master, task_instance = event.task_instance_id, attempt = event.attempt, error = %status.message(), code = ?status.code(), "cannot deliver task event; will resend");
                } else {
                    debug!(%master, task_instance = event.task_instance_id, failures, error = %status.message(), "task event still not delivered");
                }
            }
        }
        failures += 1;
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_RETRY);
    }
}
