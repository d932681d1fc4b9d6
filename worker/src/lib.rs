//! The worker role: takes ready tasks from its groups' queues, runs each
//! attempt as an OS process group, and reports what happens to the master
//! that owns the workflow instance.
//!
//! - `executor`: one attempt, from queue entry to final report (working
//!   directory, log, process group, timeout, kill, copy to the log store).
//! - `logs`: attempt logs: the one pipe a task's output goes through, the
//!   log file, reading and following it.
//! - `outbox`: ordered, at-least-once delivery of task events per master.
//! - `running`: the attempts in flight and how to stop one.
//! - `service`: the gRPC `WorkerService` (`KillTask`, `ReadLog`, `FollowLog`).
//! - `host`: the machine load carried by heartbeats.
//!
//! Task types are not known here: [`sluice_tasks::TaskPlugins`] turns a
//! dispatch into a process description.

mod executor;
mod fetch;
mod host;
mod logs;
mod orphans;
mod outbox;
mod records;
mod running;
mod service;
mod session;
mod supervisor;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures::future::{select_all, BoxFuture};
use sluice_config::WorkerConfig;
use sluice_domain::{TaskDispatch, TaskInstanceId, WorkerHeartbeat};
use sluice_logs::LogStore;
use sluice_proto::v1::task_event_request::Event;
use sluice_proto::v1::worker_service_server::WorkerServiceServer;
use sluice_proto::v1::TaskEventRequest;
use sluice_registry::{paths, Heartbeat, QueueItem, Registry, RegistryError};
use sluice_runtime::{CancellationToken, Role, RoleError, RoleTasks};
use sluice_tasks::TaskPlugins;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, warn};

use crate::host::HostSampler;
use crate::logs::LiveLogs;
use crate::outbox::Outbox;
use crate::running::Running;
pub use crate::running::TaskAttempt;

/// How long [`Worker`]'s `stop` lets running tasks finish (and their
/// events reach their masters) before killing what is left.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits after a failed queue take: the registry reconnects on its own.
const TAKE_RETRY_FIRST: Duration = Duration::from_millis(100);
const TAKE_RETRY_MAX: Duration = Duration::from_secs(2);

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot create worker directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot register worker {addr} in group `{group}`: {source}")]
    Register {
        addr: String,
        group: String,
        source: RegistryError,
    },
    #[error("worker is already started")]
    AlreadyStarted,
}

/// What the take loop, the task runners, the gRPC service and the
/// heartbeats share.
pub(crate) struct Shared {
    /// The advertised `host:port`, sent with every event.
    pub(crate) addr: String,
    pub(crate) work_dir: PathBuf,
    pub(crate) log_dir: PathBuf,
    pub(crate) kill_grace: Duration,
    pub(crate) plugins: TaskPlugins,
    pub(crate) running: Arc<Running>,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) logs: Arc<LiveLogs>,
    /// Running attempts on disk, for a restart after a crash.
    pub(crate) records: records::Records,
    /// When this worker's current incarnation began, in its heartbeats
    /// (ms since the epoch): the process start, or the end of the kills
    /// after a lost registry session. A master fails over an attempt that
    /// started before its worker's incarnation: it died with the previous one.
    pub(crate) incarnation: AtomicI64,
    /// Set while the registry session is lost and the worker kills its
    /// tasks: no new work until it is a new incarnation.
    pub(crate) paused: watch::Sender<bool>,
    /// Where finished attempts' logs are copied; none in tests that do
    /// not care.
    pub(crate) log_store: Option<Arc<dyn LogStore>>,
}

impl Shared {
    pub(crate) fn incarnation(&self) -> chrono::DateTime<Utc> {
        chrono::DateTime::from_timestamp_millis(self.incarnation.load(Ordering::SeqCst)).unwrap_or_else(Utc::now)
    }

    /// Queues an event of `dispatch`'s attempt for its master.
    pub(crate) fn report(&self, dispatch: &TaskDispatch, event: Event) {
        let request = TaskEventRequest {
            workflow_instance_id: dispatch.workflow_instance_id.get(),
            task_instance_id: dispatch.task_instance_id.get(),
            attempt: dispatch.attempt,
            worker: self.addr.clone(),
            event_time_ms: Utc::now().timestamp_millis(),
            event: Some(event),
        };
        self.outbox.send(&dispatch.master, request);
    }
}

/// The worker role. Build it with [`Worker::new`], start it through
/// [`Role::start`]; after that [`Worker::addr`] is the address it registered
/// and masters dial.
pub struct Worker {
    config: WorkerConfig,
    registry: Arc<dyn Registry>,
    plugins: TaskPlugins,
    stop_timeout: Duration,
    orphan_check: Duration,
    log_store: Option<Arc<dyn LogStore>>,
    log_retention: Option<Duration>,
    started: Option<Started>,
}

struct Started {
    local_addr: SocketAddr,
    slots: u32,
    shared: Arc<Shared>,
    semaphore: Arc<Semaphore>,
    heartbeats: Vec<Heartbeat>,
    stop_taking: CancellationToken,
    /// The take, orphan and retention loops, which run until `stop_taking`.
    loops: RoleTasks,
    stop_serving: CancellationToken,
    /// The gRPC server, which runs until `stop_serving`.
    server: RoleTasks,
}

impl Worker {
    /// A worker running the built-in task types (see
    /// [`Worker::with_plugins`]); nothing happens until it is started.
    pub fn new(config: WorkerConfig, registry: Arc<dyn Registry>) -> Self {
        Worker {
            config,
            registry,
            plugins: TaskPlugins::builtin(),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            orphan_check: orphans::CHECK_EVERY,
            log_store: None,
            log_retention: None,
            started: None,
        }
    }

    /// Copies each finished attempt's log to `store` before reporting the
    /// end, and deletes local logs older than `retention` (if set).
    pub fn with_log_store(mut self, store: Arc<dyn LogStore>, retention: Option<Duration>) -> Self {
        self.log_store = Some(store);
        self.log_retention = retention;
        self
    }

    /// Replaces the task types this worker can run.
    pub fn with_plugins(mut self, plugins: TaskPlugins) -> Self {
        self.plugins = plugins;
        self
    }

    /// How long `stop` waits for running tasks and undelivered events
    /// before killing the tasks (default [`DEFAULT_STOP_TIMEOUT`]).
    /// How often running attempts are checked for having been reassigned
    /// (default 10 s).
    pub fn with_orphan_check(mut self, every: Duration) -> Self {
        self.orphan_check = every;
        self
    }

    /// Ends everything at once, as when the machine dies: processes are
    /// killed, nothing is reported, registry nodes are left to the session
    /// (tests close it to play the node's expiry).
    pub fn crash(&mut self) {
        let Some(mut started) = self.started.take() else { return };
        started.stop_taking.cancel();
        started.loops.abort();
        started.shared.outbox.close();
        started.shared.running.stop_all(running::StopCause::Kill("worker crashed".into()));
        drop(started.heartbeats);
        started.stop_serving.cancel();
    }

    pub fn with_stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// The `host:port` masters dial and the worker registers under: once
    /// started, `advertise` if configured, else the address actually bound
    /// (a wildcard IP becomes loopback, port 0 becomes the real port).
    /// Before start, the configured address.
    pub fn addr(&self) -> String {
        match &self.started {
            Some(started) => started.shared.addr.clone(),
            None => self.config.advertise_addr(),
        }
    }

    /// The address the gRPC server is bound to, once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.started.as_ref().map(|s| s.local_addr)
    }

    /// Attempts taken and not yet finished, by task instance id.
    pub fn running_tasks(&self) -> Vec<TaskAttempt> {
        match &self.started {
            Some(started) => started.shared.running.attempts(),
            None => Vec::new(),
        }
    }

    /// Task events queued for masters and not yet accepted by them.
    pub fn pending_events(&self) -> usize {
        self.started
            .as_ref()
            .map_or(0, |s| s.shared.outbox.pending())
    }

    /// How many more tasks the worker would take now.
    pub fn free_slots(&self) -> u32 {
        self.started
            .as_ref()
            .map_or(0, |s| free_slots(s.slots, &s.shared.running))
    }

    async fn start_inner(&mut self) -> Result<(), WorkerError> {
        if self.started.is_some() {
            return Err(WorkerError::AlreadyStarted);
        }
        let work_dir = make_dir(&self.config.work_dir)?;
        let log_dir = make_dir(&self.config.log_dir)?;
        let records = records::Records::open(&work_dir, records::Process::current()).map_err(|source| WorkerError::Directory {
            path: work_dir.clone(),
            source,
        })?;
        // Before any work is taken (or this worker is even registered):
        // nothing a dead predecessor ran may overlap a new attempt.
        let survivors = records.clone();
        let _ = tokio::task::spawn_blocking(move || survivors.kill_survivors()).await;

        let listen = self.config.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| WorkerError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| WorkerError::Bind {
            addr: listen,
            source,
        })?;
        let addr = sluice_config::advertise_addr(self.config.advertise.as_deref(), local_addr);

        let running = Arc::new(Running::default());
        let live_logs = Arc::new(LiveLogs::default());
        let stop_serving = CancellationToken::new();
        let server = {
            let service = WorkerServiceServer::new(service::WorkerApi {
                running: running.clone(),
                logs: live_logs.clone(),
                log_dir: log_dir.clone(),
            });
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let stop = stop_serving.clone();
            let mut server = RoleTasks::default();
            server.spawn("grpc server", async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
            });
            server
        };

        let slots = self.config.effective_slots();
        let shared = Arc::new(Shared {
            addr: addr.clone(),
            work_dir: work_dir.clone(),
            log_dir,
            kill_grace: self.config.kill_grace,
            plugins: self.plugins.clone(),
            running,
            outbox: Outbox::new(self.registry.clone()),
            logs: live_logs,
            records,
            incarnation: AtomicI64::new(Utc::now().timestamp_millis()),
            paused: watch::channel(false).0,
            log_store: self.log_store.clone(),
        });

        let heartbeats = match self.register(&shared, slots, work_dir).await {
            Ok(heartbeats) => heartbeats,
            Err(error) => {
                stop_serving.cancel();
                let mut server = server;
                server.join().await;
                return Err(error);
            }
        };

        let semaphore = Arc::new(Semaphore::new(slots as usize));
        let stop_taking = CancellationToken::new();
        let mut loops = RoleTasks::default();
        loops.spawn(
            "take loop",
            take_loop(shared.clone(), self.registry.clone(), self.config.groups.clone(), semaphore.clone(), stop_taking.clone()),
        );
        loops.spawn("orphan loop", orphans::orphan_loop(shared.clone(), self.registry.clone(), self.orphan_check, stop_taking.clone()));
        // Without a retention it has nothing to do.
        loops.spawn_may_finish(
            "retention loop",
            stop_taking.clone(),
            logs::retention_loop(shared.log_dir.clone(), self.log_retention, stop_taking.clone()),
        );
        // A session closed for good has nothing left to watch.
        loops.spawn_may_finish(
            "session loop",
            stop_taking.clone(),
            session::session_loop(shared.clone(), self.registry.clone(), self.config.keep_running_when_disconnected, stop_taking.clone()),
        );
        info!(%addr, %local_addr, groups = ?self.config.groups, slots, task_types = ?self.plugins.known(), "worker started");
        self.started = Some(Started {
            local_addr,
            slots,
            shared,
            semaphore,
            heartbeats,
            stop_taking,
            loops,
            stop_serving,
            server,
        });
        Ok(())
    }

    /// Registers `nodes/workers/<group>/<addr>` for every group.
    async fn register(
        &self,
        shared: &Arc<Shared>,
        slots: u32,
        work_dir: PathBuf,
    ) -> Result<Vec<Heartbeat>, WorkerError> {
        let sampler = Arc::new(HostSampler::new(work_dir));
        let mut heartbeats = Vec::new();
        for group in &self.config.groups {
            let data = {
                let (shared, sampler, groups) =
                    (shared.clone(), sampler.clone(), self.config.groups.clone());
                move || {
                    let mut running: Vec<TaskInstanceId> = shared
                        .running
                        .attempts()
                        .into_iter()
                        .map(|a| a.task_instance_id)
                        .collect();
                    running.dedup();
                    let beat = WorkerHeartbeat {
                        addr: shared.addr.clone(),
                        groups: groups.clone(),
                        started_at: shared.incarnation(),
                        heartbeat_at: Utc::now(),
                        slots,
                        free_slots: free_slots(slots, &shared.running),
                        running,
                        host: sampler.sample(),
                    };
                    serde_json::to_vec(&beat).unwrap_or_default()
                }
            };
            let path = paths::worker_node(group, &shared.addr);
            match Heartbeat::start(
                self.registry.clone(),
                path,
                self.config.heartbeat_interval,
                data,
            )
            .await
            {
                Ok(heartbeat) => heartbeats.push(heartbeat),
                Err(source) => {
                    for heartbeat in heartbeats {
                        heartbeat.stop().await;
                    }
                    return Err(WorkerError::Register {
                        addr: shared.addr.clone(),
                        group: group.clone(),
                        source,
                    });
                }
            }
        }
        Ok(heartbeats)
    }

    async fn stop_inner(&mut self) {
        let Some(mut started) = self.started.take() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + self.stop_timeout;

        // No new work from now on; a take in flight is dropped, which the
        // registry guarantees loses nothing.
        started.stop_taking.cancel();
        started.loops.join().await;

        // Every slot back means every attempt has finished and queued its
        // last event. Heartbeats keep going meanwhile: a worker that
        // vanished from the registry would have its tasks failed over while
        // they still run here.
        let all_slots = started.semaphore.acquire_many(started.slots);
        let drained = tokio::time::timeout_at(deadline, all_slots).await.is_ok();
        if !drained {
            let left = started
                .shared
                .running
                .stop_all(running::StopCause::Shutdown);
            warn!(
                tasks = left,
                "tasks still running at the stop deadline; killing them"
            );
            let grace = started.shared.kill_grace + Duration::from_secs(5);
            if tokio::time::timeout(grace, started.semaphore.acquire_many(started.slots))
                .await
                .is_err()
            {
                error!(
                    tasks = started.shared.running.len(),
                    "tasks did not end after being killed"
                );
            }
        }

        let flush_until = deadline.max(tokio::time::Instant::now() + Duration::from_secs(2));
        if tokio::time::timeout_at(flush_until, started.shared.outbox.flushed())
            .await
            .is_err()
        {
            warn!(
                events = started.shared.outbox.pending(),
                "task events not delivered before stop; they are lost"
            );
        }
        started.shared.outbox.close();

        for heartbeat in started.heartbeats {
            heartbeat.stop().await;
        }
        started.stop_serving.cancel();
        started.server.join().await;
        info!(addr = %started.shared.addr, "worker stopped");
    }
}

fn free_slots(slots: u32, running: &Running) -> u32 {
    slots.saturating_sub(u32::try_from(running.len()).unwrap_or(u32::MAX))
}

/// Creates `dir` and makes it absolute, so that the paths the worker
/// reports (logs) and runs (scripts, with cwd set to the task's directory)
/// mean the same whatever the worker's own cwd.
fn make_dir(dir: &std::path::Path) -> Result<PathBuf, WorkerError> {
    let error = |source| WorkerError::Directory {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(error)?;
    std::path::absolute(dir).map_err(error)
}

#[async_trait]
impl Role for Worker {
    fn name(&self) -> &'static str {
        "worker"
    }

    async fn start(&mut self) -> Result<(), RoleError> {
        Ok(self.start_inner().await?)
    }

    async fn stop(&mut self) -> Result<(), RoleError> {
        self.stop_inner().await;
        Ok(())
    }

    async fn ended(&mut self) -> RoleError {
        match self.started.as_mut() {
            Some(started) => tokio::select! {
                error = started.loops.ended() => error,
                error = started.server.ended() => error,
            },
            None => std::future::pending().await,
        }
    }
}

/// Takes one task per free slot, forever: a slot first, then the lowest
/// key of any of the worker's groups, so that a busy worker leaves queued
/// tasks to idle workers and a single-slot worker runs them in key order.
async fn take_loop(
    shared: Arc<Shared>,
    registry: Arc<dyn Registry>,
    groups: Vec<String>,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
) {
    if groups.is_empty() {
        warn!("worker has no groups; it will take no tasks");
        return;
    }
    let mut first_group = 0;
    let mut retry = TAKE_RETRY_FIRST;
    let mut paused = shared.paused.subscribe();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            resumed = paused.wait_for(|paused| !*paused) => if resumed.is_err() { return },
        }
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let taken = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            taken = take_any(&registry, &groups, first_group) => taken,
        };
        // Rotate which group is asked first, so that one always-full group
        // cannot starve the others.
        first_group = (first_group + 1) % groups.len();
        match taken {
            Ok((group, item)) => {
                retry = TAKE_RETRY_FIRST;
                tokio::spawn(executor::run(shared.clone(), group, item, permit));
            }
            Err(RegistryError::Closed) => {
                warn!("registry session closed; no longer taking tasks");
                return;
            }
            Err(error) => {
                drop(permit);
                warn!(%error, retry_in = ?retry, "cannot take from the task queue");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(TAKE_RETRY_MAX);
            }
        }
    }
}

/// The first entry any of `groups` yields. Losing takes are dropped, which
/// is safe because `queue_take` is cancel-safe.
async fn take_any(
    registry: &Arc<dyn Registry>,
    groups: &[String],
    first: usize,
) -> Result<(String, QueueItem), RegistryError> {
    if let [group] = groups {
        return registry
            .queue_take(group)
            .await
            .map(|item| (group.clone(), item));
    }
    let takes: Vec<BoxFuture<'_, Result<(String, QueueItem), RegistryError>>> = (0..groups.len())
        .map(|i| &groups[(first + i) % groups.len()])
        .map(|group| -> BoxFuture<'_, _> {
            Box::pin(async move {
                registry
                    .queue_take(group)
                    .await
                    .map(|item| (group.clone(), item))
            })
        })
        .collect();
    let (taken, _, _) = select_all(takes).await;
    taken
}
