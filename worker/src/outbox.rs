//! Reliable delivery of task events to masters.
//!
//! A master persists every state change a worker reports, so an event that
//! is lost is a task that looks stuck forever. Events therefore go into an
//! in-memory outbox per master address, delivered by [`LANES`] senders per
//! master: a task's events always go through the same lane, so they arrive
//! in order, while different tasks' events are delivered side by side (a
//! master persists each event before accepting it, and takes the events
//! that arrive together in one transaction). Each is resent (with backoff)
//! until the master accepts it. Delivery is at least once: the master
//! ignores repeats. Task runners only ever enqueue, so a master that is
//! down or slow never holds a task up.
//!
//! After a master failover the instance has a new owner. A master that
//! refuses an event names the owner, and the event (and the task's later
//! events) go there; when the addressed master cannot be reached for a
//! while, any live master is asked instead, which answers or names the
//! owner. A task's events stay in one queue, so their order is kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_proto::v1::master_service_client::MasterServiceClient;
use sluice_proto::v1::TaskEventRequest;
use sluice_registry::{paths, Registry};
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
/// Failed attempts on one master before asking the live ones.
const ASK_OTHERS_AFTER: u32 = 3;
/// The largest dispatch a worker reads (gRPC's default is 4 MB; the API
/// takes definitions up to 64 MB).
const MAX_DISPATCH: usize = 96 << 20;
/// Events of different tasks in flight to one master at most.
const LANES: usize = 16;

pub(crate) struct Outbox {
    /// `None` once closed.
    senders: Mutex<Option<HashMap<String, Sender>>>,
    /// Events enqueued and not yet accepted, over all masters.
    pending: watch::Sender<usize>,
    /// Where a task's events go when not to the master of its dispatch.
    routes: Mutex<HashMap<i64, String>>,
    /// One channel per master address.
    clients: Mutex<HashMap<String, MasterServiceClient<Channel>>>,
    registry: Arc<dyn Registry>,
}

/// The lanes of one master.
struct Sender {
    lanes: Vec<mpsc::UnboundedSender<TaskEventRequest>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Outbox {
    pub(crate) fn new(registry: Arc<dyn Registry>) -> Arc<Self> {
        Arc::new(Outbox {
            senders: Mutex::new(Some(HashMap::new())),
            pending: watch::channel(0).0,
            routes: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            registry,
        })
    }

    pub(crate) fn client(&self, master: &str) -> Option<MasterServiceClient<Channel>> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(master) {
            return Some(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{master}")).ok()?;
        let client = MasterServiceClient::new(endpoint.connect_timeout(CONNECT_TIMEOUT).timeout(REQUEST_TIMEOUT).connect_lazy())
            .max_decoding_message_size(MAX_DISPATCH);
        clients.insert(master.to_owned(), client.clone());
        Some(client)
    }

    fn route(&self, task: i64) -> Option<String> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).get(&task).cloned()
    }

    fn reroute(&self, task: i64, master: &str) {
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).insert(task, master.to_owned());
    }

    /// Live masters other than `except`.
    async fn live_masters(&self, except: &str) -> Vec<String> {
        match self.registry.members(&paths::masters_dir()).await {
            Ok(members) => members.into_iter().map(|m| m.name).filter(|m| m != except).collect(),
            Err(_) => Vec::new(),
        }
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
            let (lanes, tasks) = (0..LANES)
                .map(|_| {
                    let (events, queue) = mpsc::unbounded_channel();
                    (events, tokio::spawn(deliver(self.clone(), master.to_owned(), queue)))
                })
                .unzip();
            Sender { lanes, tasks }
        });
        self.pending.send_modify(|n| *n += 1);
        let lane = event.task_instance_id.rem_euclid(LANES as i64) as usize;
        // The receiver lives as long as the sender task, which only ends
        // when this sender is dropped (or aborted by `close`, which also
        // removes this entry under the same lock).
        let _ = sender.lanes[lane].send(event);
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
        for task in senders.into_iter().flat_map(|sender| sender.tasks) {
            task.abort();
        }
        self.pending()
    }

    fn delivered(&self) {
        self.pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One lane of a master: delivers its events one at a time, in order.
async fn deliver(outbox: Arc<Outbox>, master: String, mut queue: mpsc::UnboundedReceiver<TaskEventRequest>) {
    if outbox.client(&master).is_none() {
        // No retry can fix an address that does not parse: drop what
        // comes, loudly, rather than hold the worker's stop for it.
        error!(%master, "master address is not a valid host:port; dropping its task events");
        while let Some(event) = queue.recv().await {
            error!(%master, task_instance = event.task_instance_id, attempt = event.attempt, "task event dropped");
            outbox.delivered();
        }
        return;
    }
    while let Some(event) = queue.recv().await {
        deliver_one(&outbox, &master, event).await;
        outbox.delivered();
    }
}

/// Asking masters about one instance, round after round: the master named
/// so far (`target`) first, and once it failed to answer
/// [`ASK_OTHERS_AFTER`] times in a row, every live master too (any master
/// can name an instance's owner); rounds wait from [`FIRST_RETRY`],
/// doubling up to [`MAX_RETRY`]. Task events and dispatch fetches both
/// find their master this way.
pub(crate) struct Pursuit {
    target: String,
    unreachable: u32,
    wait: Duration,
}

impl Pursuit {
    pub(crate) fn new(target: String) -> Self {
        Pursuit { target, unreachable: 0, wait: FIRST_RETRY }
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// The masters to ask this round, the target first.
    pub(crate) async fn round(&self, outbox: &Outbox) -> Vec<String> {
        let mut masters = vec![self.target.clone()];
        if self.unreachable >= ASK_OTHERS_AFTER {
            masters.extend(outbox.live_masters(&self.target).await);
        }
        masters
    }

    /// `to` answered, or (`reached: false`) could not be reached.
    pub(crate) fn answered(&mut self, to: &str, reached: bool) {
        if to == self.target {
            self.unreachable = if reached { 0 } else { self.unreachable + 1 };
        }
    }

    /// A master named the owner: ask it from now on.
    pub(crate) fn redirect(&mut self, owner: String) {
        self.target = owner;
        self.unreachable = 0;
    }

    /// Waits before the next round.
    pub(crate) async fn pause(&mut self) {
        tokio::time::sleep(self.wait).await;
        self.wait = (self.wait * 2).min(MAX_RETRY);
    }
}

/// Sends `event` until a master accepts it: the task's current route (the
/// dispatch's master at first), the owner a master names, or, while the
/// route is unreachable, any live master.
async fn deliver_one(outbox: &Outbox, master: &str, event: TaskEventRequest) {
    let task = event.task_instance_id;
    // Only this lane changes the task's route: it stays in `pursuit`.
    let mut pursuit = Pursuit::new(outbox.route(task).unwrap_or_else(|| master.to_owned()));
    let mut failures = 0u32;
    loop {
        for to in pursuit.round(outbox).await {
            let Some(mut client) = outbox.client(&to) else { continue };
            match client.report_task_event(event.clone()).await {
                Ok(reply) if reply.get_ref().accepted => {
                    if to != pursuit.target() {
                        outbox.reroute(task, &to);
                    }
                    if failures > 0 {
                        info!(master = %to, task_instance = task, attempt = event.attempt, failures, "task event delivered after retries");
                    } else {
                        debug!(master = %to, task_instance = task, attempt = event.attempt, "task event delivered");
                    }
                    return;
                }
                Ok(reply) => {
                    let reply = reply.into_inner();
                    if !reply.owner.is_empty() && reply.owner != pursuit.target() {
                        info!(from = %pursuit.target(), to = %reply.owner, task_instance = task, "task events redirected to the instance's owner");
                        outbox.reroute(task, &reply.owner);
                        pursuit.redirect(reply.owner);
                        break;
                    }
                    pursuit.answered(&to, true);
                    if failures == 0 {
                        warn!(master = %to, task_instance = task, attempt = event.attempt, reason = %reply.reason, "master refused task event; will resend");
                    }
                }
                Err(status) => {
                    pursuit.answered(&to, false);
                    if failures == 0 {
                        warn!(master = %to, task_instance = task, attempt = event.attempt, error = %status.message(), code = ?status.code(), "cannot deliver task event; will resend");
                    } else {
                        debug!(master = %to, task_instance = task, failures, error = %status.message(), "task event still not delivered");
                    }
                }
            }
        }
        failures += 1;
        pursuit.pause().await;
    }
}
