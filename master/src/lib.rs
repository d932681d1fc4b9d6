//! The master role. Several run at once, none special. Each registers under
//! `nodes/masters/`, claims commands under the `locks/command-scan` lock,
//! and drives the workflow instances it owns, one async task each
//! ([`driver`]); workers report task events to it over gRPC ([`rpc`]).

mod commands;
mod cron;
mod dispatches;
mod driver;
mod failover;
mod listings;
mod retention;
mod retry;
mod rpc;
mod run;
mod workers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use sluice_config::MasterConfig;
use sluice_domain::{MasterHeartbeat, WorkflowInstanceId};
use sluice_proto::v1::master_service_server::MasterServiceServer;
use sluice_registry::{paths, Heartbeat, Registry};
use sluice_runtime::{CancellationToken, Role, RoleError, RoleTasks};
use sluice_logs::LogStore;
use sluice_storage::{Store, StoreError};
use sluice_tasks::TaskPlugins;
use tokio::sync::mpsc;

use crate::driver::DriverMsg;
use crate::workers::{WorkerClients, WorkerTracker};

/// State shared by the command loop, the drivers and the gRPC service.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub registry: Arc<dyn Registry>,
    /// `host:port` workers report to; recorded as the owner of instances.
    pub addr: String,
    pub config: MasterConfig,
    /// The instances this master drives, by id.
    pub drivers: Mutex<HashMap<WorkflowInstanceId, mpsc::UnboundedSender<DriverMsg>>>,
    pub workers: WorkerClients,
    pub worker_tracker: WorkerTracker,
    pub shutdown: CancellationToken,
    /// Whether this master holds `locks/cron` right now.
    pub cron_leader: std::sync::atomic::AtomicBool,
    /// Masters whose failover this master is running.
    pub failovers: Mutex<std::collections::HashSet<String>>,
    /// The task log store and how long its logs are kept, if they expire.
    pub log_retention: Option<(Arc<dyn LogStore>, std::time::Duration)>,
    /// Where the master writes the logs of tasks that end without running.
    pub log_store: Option<Arc<dyn LogStore>>,
    /// The task types, for where each runs.
    pub plugins: TaskPlugins,
    /// Queue listings shared by the drivers' watchdogs.
    pub queue_listings: listings::QueueListings,
    /// Dispatches of queued attempts, until their worker fetches them.
    pub dispatches: dispatches::Board,
}

/// What resolving a task's parameters needs to know about its run: the
/// project (`None` if it is gone), the schedule's zone, this master.
pub(crate) async fn run_context(shared: &Shared, instance: &sluice_domain::WorkflowInstance) -> Result<Option<run::RunContext>, StoreError> {
    use sluice_domain::{Schedule, Trigger};
    let Some(project) = shared.store.project_by_id(instance.project_id).await? else { return Ok(None) };
    let timezone = match shared.store.schedule(instance.workflow_id).await? {
        Some(Schedule { trigger: Trigger::Cron { timezone, .. }, .. }) => sluice_params::timezone(&timezone).unwrap_or(sluice_params::Tz::UTC),
        _ => sluice_params::Tz::UTC,
    };
    Ok(Some(run::RunContext { project: project.name, project_params: project.params, timezone, master: shared.addr.clone() }))
}

impl Shared {
    /// The driver of `id`, if one runs (a driver that died without
    /// cleaning up, by panicking, does not count).
    pub fn driver(&self, id: WorkflowInstanceId) -> Option<mpsc::UnboundedSender<DriverMsg>> {
        self.drivers.lock().expect("drivers lock").get(&id).filter(|tx| !tx.is_closed()).cloned()
    }
}

pub struct Master {
    config: MasterConfig,
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    shared: Option<Arc<Shared>>,
    heartbeat: Option<Heartbeat>,
    /// The gRPC server and the loops, which must run until `stop`.
    tasks: RoleTasks,
    bound: Option<SocketAddr>,
    log_retention: Option<(Arc<dyn LogStore>, std::time::Duration)>,
    log_store: Option<Arc<dyn LogStore>>,
    plugins: TaskPlugins,
}

impl Master {
    pub fn new(config: MasterConfig, store: Arc<dyn Store>, registry: Arc<dyn Registry>) -> Self {
        Master {
            config,
            store,
            registry,
            shared: None,
            heartbeat: None,
            tasks: RoleTasks::default(),
            bound: None,
            log_retention: None,
            log_store: None,
            plugins: TaskPlugins::builtin(),
        }
    }

    /// Writes the logs of tasks that end without running (a skip, a kill
    /// before start, parameters that cannot be resolved) to `store`.
    pub fn with_log_store(mut self, store: Arc<dyn LogStore>) -> Self {
        self.log_store = Some(store);
        self
    }

    /// The task types this master knows (where each runs).
    pub fn with_plugins(mut self, plugins: TaskPlugins) -> Self {
        self.plugins = plugins;
        self
    }

    /// Deletes task logs older than `retention` from `store` (one master
    /// at a time, every `retention_interval`).
    pub fn with_log_retention(mut self, store: Arc<dyn LogStore>, retention: std::time::Duration) -> Self {
        self.log_retention = Some((store, retention));
        self
    }

    /// `host:port` under which workers reach this master (known once started:
    /// with port 0 it is the port actually bound).
    pub fn addr(&self) -> Option<String> {
        self.shared.as_ref().map(|s| s.addr.clone())
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.bound
    }

    /// Whether this master fires the schedules (holds `locks/cron`).
    pub fn is_cron_leader(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.cron_leader.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// How many queue listings this master's watchdogs took from the
    /// registry so far (each group at most once a tick, however many tasks
    /// wait in it).
    pub fn queue_listings_taken(&self) -> u64 {
        self.shared.as_ref().map_or(0, |s| s.queue_listings.taken())
    }

    /// Dispatches waiting for their worker to fetch them (queued attempts
    /// not reported yet).
    pub fn dispatches_posted(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.dispatches.len())
    }

    /// Workflow instances driven right now.
    pub fn driven_instances(&self) -> Vec<WorkflowInstanceId> {
        self.shared.as_ref().map_or_else(Vec::new, |s| s.drivers.lock().expect("drivers lock").keys().copied().collect())
    }
}

#[async_trait]
impl Role for Master {
    fn name(&self) -> &'static str {
        "master"
    }

    async fn start(&mut self) -> Result<(), RoleError> {
        let listener = tokio::net::TcpListener::bind(self.config.listen)
            .await
            .map_err(|e| format!("master: cannot listen on {}: {e}", self.config.listen))?;
        let bound = listener.local_addr()?;
        self.bound = Some(bound);
        let addr = sluice_config::advertise_addr(self.config.advertise.as_deref(), bound);
        let shared = Arc::new(Shared {
            store: self.store.clone(),
            registry: self.registry.clone(),
            addr: addr.clone(),
            config: self.config.clone(),
            drivers: Mutex::new(HashMap::new()),
            workers: WorkerClients::default(),
            worker_tracker: WorkerTracker::default(),
            shutdown: CancellationToken::new(),
            cron_leader: std::sync::atomic::AtomicBool::new(false),
            failovers: Mutex::new(std::collections::HashSet::new()),
            log_retention: self.log_retention.clone(),
            log_store: self.log_store.clone(),
            plugins: self.plugins.clone(),
            queue_listings: listings::QueueListings::default(),
            dispatches: dispatches::Board::default(),
        });

        let service = MasterServiceServer::new(rpc::MasterRpc::new(shared.clone()));
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let stop = shared.shutdown.clone();
        self.tasks.spawn("grpc server", async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        });

        // Instances this address owned before a restart are ours again.
        commands::resume_owned(&shared).await?;

        let started_at = Utc::now();
        let beat = {
            let shared = shared.clone();
            move || {
                let beat = MasterHeartbeat {
                    addr: shared.addr.clone(),
                    started_at,
                    heartbeat_at: Utc::now(),
                    workflow_instances: shared.drivers.lock().map(|d| d.len() as u32).unwrap_or(0),
                };
                serde_json::to_vec(&beat).expect("heartbeat serializes")
            }
        };
        self.heartbeat = Some(
            Heartbeat::start(self.registry.clone(), paths::master_node(&addr), self.config.heartbeat_interval, beat).await?,
        );
        self.tasks.spawn("command loop", commands::command_loop(shared.clone()));
        self.tasks.spawn("cron loop", cron::cron_loop(shared.clone()));
        self.tasks.spawn("failover loop", failover::failover_loop(shared.clone()));
        // Without a retention configured these have nothing to do.
        self.tasks.spawn_may_finish("retention loop", shared.shutdown.clone(), retention::retention_loop(shared.clone()));
        self.tasks.spawn_may_finish("log retention loop", shared.shutdown.clone(), retention::log_retention_loop(shared.clone()));
        self.shared = Some(shared);
        tracing::info!(%addr, "master registered");
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), RoleError> {
        self.halt();
        self.tasks.join().await;
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.stop().await;
        }
        Ok(())
    }

    async fn ended(&mut self) -> RoleError {
        self.tasks.ended().await
    }
}

impl Master {
    /// Stops everything this master does at once, as a crash would, leaving
    /// its registry node to its session (tests close the session to play a
    /// dead master).
    pub fn crash(&mut self) {
        self.halt();
        self.tasks.abort();
        // Dropping stops the refresh but leaves the node: like a crash.
        drop(self.heartbeat.take());
    }

    fn halt(&self) {
        if let Some(shared) = &self.shared {
            // Drivers leave their instances as they are: another master (or
            // this one restarted) adopts them.
            shared.shutdown.cancel();
        }
    }
}
