//! The cluster sandbox (STYLE.md §5): starts Sluice the two ways it is
//! deployed, on real components, for end-to-end tests.
//!
//! - [`Sandbox::standalone`]: one master and one worker sharing the embedded
//!   registry, on a SQLite file, as `sluice standalone` runs them.
//! - [`Sandbox::cluster`]: N masters and M workers, each with its own
//!   ZooKeeper session and database pool (as separate processes would have),
//!   on the real ZooKeeper from `SLUICE_TEST_ZK` (under a unique root) and a
//!   fresh database on the real PostgreSQL.
//!
//! Every role listens on port 0. Tests submit work through the store, as the
//! API does, and wait on state, never on fixed sleeps.

pub mod chaos;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::{MasterConfig, WorkerConfig};
use sluice_domain::*;
use sluice_api::ApiServer;
use sluice_logs::{DirLogStore, LogStore};
use sluice_master::Master;
use sluice_registry::{EmbeddedRegistry, Registry, ZkRegistry};
use sluice_runtime::Role;
use sluice_storage::{PgStore, PoolOptions, SqliteStore, Store};
use sluice_testkit::postgres::TempDatabase;
use sluice_worker::Worker;

/// How the sandbox's roles reach each other.
enum Registries {
    /// One in-process registry shared by every role, as in standalone.
    Embedded(Arc<dyn Registry>),
    /// A ZooKeeper session per role under one cluster root.
    ZooKeeper { address: String, root: String },
}

enum Database {
    Sqlite(String),
    Postgres(TempDatabase),
}

pub struct Sandbox {
    name: &'static str,
    store: Arc<dyn Store>,
    registries: Registries,
    database: Database,
    api: ApiServer,
    /// Each master with its own registry session.
    masters: Vec<(Master, Arc<dyn Registry>)>,
    /// Each worker with its own registry session.
    workers: Vec<(Worker, Arc<dyn Registry>)>,
    sessions: Vec<Arc<dyn Registry>>,
    /// Workers started so far (restarts included), to give each its own
    /// directories: `worker-<n>`, from 0.
    worker_seq: usize,
    dir: tempfile::TempDir,
    project: ProjectId,
    /// The task log store every worker and the API share (a directory).
    log_store: Arc<dyn LogStore>,
}

/// Logs to the test output once per process (`RUST_LOG` picks the level).
fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// What a master started by [`Sandbox::add_master_with_retention`] keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Finished instances older than this are deleted.
    pub history: Duration,
    /// Task logs in the log store older than this are deleted.
    pub logs: Duration,
    /// How often both are looked at.
    pub every: Duration,
}

impl Sandbox {
    /// `sluice standalone`: one master and one worker (4 slots, group
    /// `default`) on SQLite and the embedded registry.
    pub async fn standalone() -> Sandbox {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sluice.db").to_string_lossy().into_owned();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path, PoolOptions::sized(8)).await.expect("open sqlite"));
        let registry: Arc<dyn Registry> = Arc::new(EmbeddedRegistry::new().session());
        let mut sandbox = Sandbox::assemble("standalone", store, Registries::Embedded(registry), Database::Sqlite(path), dir).await;
        sandbox.add_master().await;
        sandbox.add_worker(&["default"], 4).await;
        sandbox
    }

    /// A cluster of `masters` masters and `workers` workers (4 slots each,
    /// group `default`) on the real ZooKeeper and PostgreSQL.
    pub async fn cluster(masters: usize, workers: usize) -> Sandbox {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let db = tokio::task::spawn_blocking(TempDatabase::create).await.expect("create database");
        let store: Arc<dyn Store> = Arc::new(PgStore::open(db.url(), PoolOptions::sized(8)).await.expect("open postgres"));
        let registries = Registries::ZooKeeper {
            address: sluice_testkit::zookeeper::zookeeper_address(),
            root: sluice_testkit::zookeeper::unique_root("e2e"),
        };
        let mut sandbox = Sandbox::assemble("cluster", store, registries, Database::Postgres(db), dir).await;
        for _ in 0..masters {
            sandbox.add_master().await;
        }
        for _ in 0..workers {
            sandbox.add_worker(&["default"], 4).await;
        }
        sandbox
    }

    async fn assemble(name: &'static str, store: Arc<dyn Store>, registries: Registries, database: Database, dir: tempfile::TempDir) -> Sandbox {
        let project = store.create_project("e2e", "end-to-end tests", &Params::new()).await.expect("create project").id;
        let log_store: Arc<dyn LogStore> = Arc::new(DirLogStore::new(dir.path().join("log-store")));
        // The API signals the masters through the registry when it inserts
        // commands, as `sluice api` does.
        let (api_registry, sessions) = match &registries {
            Registries::Embedded(registry) => (registry.clone(), Vec::new()),
            Registries::ZooKeeper { address, root } => {
                let registry: Arc<dyn Registry> =
                    Arc::new(ZkRegistry::connect(address, root, Duration::from_secs(10)).await.expect("connect zookeeper"));
                (registry.clone(), vec![registry])
            }
        };
        let mut api = ApiServer::new("127.0.0.1:0".parse().expect("addr"), store.clone())
            .with_log_store(log_store.clone())
            .with_registry(api_registry);
        api.start().await.expect("start api");
        Sandbox { name, store, registries, database, api, masters: Vec::new(), workers: Vec::new(), sessions, worker_seq: 0, dir, project, log_store }
    }

    /// "standalone" or "cluster", for messages.
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The PostgreSQL database of a cluster sandbox, for tests that reach
    /// under the store; `None` in standalone.
    pub fn database_url(&self) -> Option<&str> {
        match &self.database {
            Database::Postgres(db) => Some(db.url()),
            Database::Sqlite(_) => None,
        }
    }

    /// Base URL of the sandbox's REST API, e.g. `http://127.0.0.1:40123`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api.local_addr().expect("api started"))
    }

    /// The project the sandbox created (`e2e`).
    pub fn project(&self) -> ProjectId {
        self.project
    }

    /// The directory of the sandbox's task log store.
    pub fn log_store_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("log-store")
    }

    /// A worker's local log directory (workers are numbered from 0 in the
    /// order they were added).
    pub fn worker_log_dir(&self, n: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("worker-{n}/logs"))
    }

    /// A scratch directory tests may use for files their tasks write.
    pub fn scratch(&self) -> std::path::PathBuf {
        let dir = self.dir.path().join("scratch");
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// A role's own view of the database and registry: shared in standalone,
    /// separate (like another process) in a cluster.
    async fn connect(&mut self) -> (Arc<dyn Store>, Arc<dyn Registry>) {
        match &self.registries {
            Registries::Embedded(registry) => (self.store.clone(), registry.clone()),
            Registries::ZooKeeper { address, root } => {
                let registry: Arc<dyn Registry> =
                    Arc::new(ZkRegistry::connect(address, root, Duration::from_secs(10)).await.expect("connect zookeeper"));
                self.sessions.push(registry.clone());
                let store: Arc<dyn Store> = match &self.database {
                    Database::Postgres(db) => Arc::new(PgStore::open(db.url(), PoolOptions::sized(4)).await.expect("open postgres")),
                    Database::Sqlite(path) => Arc::new(SqliteStore::open(path, PoolOptions::sized(4)).await.expect("open sqlite")),
                };
                (store, registry)
            }
        }
    }

    /// A registry session of its own (a new one in a cluster): to look at
    /// what the roles keep there.
    pub async fn registry_session(&mut self) -> Arc<dyn Registry> {
        self.connect().await.1
    }

    pub async fn add_master(&mut self) {
        self.start_master("127.0.0.1:0", |registry| registry, None).await;
    }

    /// Starts a master whose registry session goes through `wrap`: for
    /// tests that make the registry fail under a master.
    pub async fn add_master_through(&mut self, wrap: impl FnOnce(Arc<dyn Registry>) -> Arc<dyn Registry>) {
        self.start_master("127.0.0.1:0", wrap, None).await;
    }

    /// Starts a master listening on `listen` (`127.0.0.1:<port>`): the
    /// identity of a master that ran there before.
    pub async fn add_master_at(&mut self, listen: &str) {
        self.start_master(listen, |registry| registry, None).await;
    }

    /// Starts a master that deletes old history and old task logs (in the
    /// sandbox's log store) as `retention` says.
    pub async fn add_master_with_retention(&mut self, retention: Retention) {
        self.start_master("127.0.0.1:0", |registry| registry, Some(retention)).await;
    }

    async fn start_master(
        &mut self,
        listen: &str,
        wrap: impl FnOnce(Arc<dyn Registry>) -> Arc<dyn Registry>,
        retention: Option<Retention>,
    ) {
        let (store, registry) = self.connect().await;
        let registry = wrap(registry);
        let mut config = MasterConfig {
            listen: listen.parse().expect("a master address"),
            command_interval: Duration::from_millis(20),
            failover_grace: Duration::from_millis(500),
            ..MasterConfig::default()
        };
        if let Some(retention) = &retention {
            config.history_retention = Some(retention.history);
            config.retention_interval = retention.every;
        }
        let mut master = Master::new(config, store, registry.clone()).with_log_store(self.log_store.clone());
        if let Some(retention) = retention {
            master = master.with_log_retention(self.log_store.clone(), retention.logs);
        }
        master.start().await.expect("start master");
        self.masters.push((master, registry));
    }

    /// Starts a worker serving `groups` with `slots` slots.
    pub async fn add_worker(&mut self, groups: &[&str], slots: u32) {
        self.start_worker("127.0.0.1:0".parse().expect("addr"), groups, slots).await;
    }

    /// Starts a new worker process, as it were, at the address of one that
    /// crashed (`crash_worker`): same identity, new incarnation. Serves
    /// group `default` with 4 slots.
    pub async fn restart_worker(&mut self, addr: &str) {
        self.start_worker(addr.parse().expect("a worker address"), &["default"], 4).await;
    }

    async fn start_worker(&mut self, listen: std::net::SocketAddr, groups: &[&str], slots: u32) {
        let (_, registry) = self.connect().await;
        let n = self.worker_seq;
        self.worker_seq += 1;
        let config = WorkerConfig {
            listen,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            slots: Some(slots),
            heartbeat_interval: Duration::from_secs(1),
            work_dir: self.dir.path().join(format!("worker-{n}/work")),
            log_dir: self.dir.path().join(format!("worker-{n}/logs")),
            kill_grace: Duration::from_secs(2),
            ..WorkerConfig::default()
        };
        let mut worker = Worker::new(config, registry.clone())
            .with_log_store(self.log_store.clone(), None)
            .with_stop_timeout(Duration::from_secs(5))
            .with_orphan_check(Duration::from_secs(1));
        worker.start().await.expect("start worker");
        self.workers.push((worker, registry));
    }

    /// Stores `spec` in the sandbox's project.
    pub async fn apply(&self, spec: &WorkflowSpec) -> WorkflowId {
        spec.validate().expect("valid workflow");
        self.store.save_workflow(self.project, spec).await.expect("save workflow").id
    }

    /// Submits a run of `workflow` the way the API does: the instance row
    /// exists before any master picked up the command.
    pub async fn run(&self, workflow: WorkflowId) -> WorkflowInstanceId {
        self.run_from(workflow, &[], None).await
    }

    /// A run limited to `start_tasks` with `scope`.
    pub async fn run_from(&self, workflow: WorkflowId, start_tasks: &[&str], scope: Option<RunScope>) -> WorkflowInstanceId {
        let start_tasks: Vec<String> = start_tasks.iter().map(|t| t.to_string()).collect();
        let def = self.store.workflow_by_id(workflow, None).await.expect("load").expect("workflow exists");
        let instance = NewWorkflowInstance { start_tasks: start_tasks.clone(), scope, ..NewWorkflowInstance::start(&def) };
        let command = NewCommand::Start(StartRun { start_tasks, scope, workflow_version: Some(def.version), ..StartRun::of(def.id) });
        self.store.submit_run(&instance, &command).await.expect("submit run").0
    }

    pub async fn stop(&self, instance: WorkflowInstanceId) {
        self.command(instance, CommandKind::Stop, Vec::new()).await;
    }

    pub async fn kill_task(&self, instance: WorkflowInstanceId, task: &str) {
        self.command(instance, CommandKind::KillTask, vec![task.to_owned()]).await;
    }

    /// Writes a command of `kind` for `instance` (and `tasks`), as the API does.
    pub async fn command(&self, instance: WorkflowInstanceId, kind: CommandKind, tasks: Vec<String>) {
        let wi = self.store.workflow_instance(instance).await.expect("load").expect("instance exists");
        let target = InstanceTarget::of(&wi);
        let command = match kind {
            CommandKind::Rerun => NewCommand::Rerun(target),
            CommandKind::RecoverFailure => NewCommand::Recover { target, force_success: tasks },
            CommandKind::Resume => NewCommand::Resume(target),
            CommandKind::Pause => NewCommand::Pause(target),
            CommandKind::Stop => NewCommand::Stop(target),
            CommandKind::KillTask => NewCommand::KillTask { target, tasks },
            CommandKind::ForceSuccess => NewCommand::ForceSuccess { target, tasks },
            other => panic!("{other} is not a command for an instance"),
        };
        self.store.insert_command(&command).await.expect("insert command");
    }

    /// Waits until `check` holds for the instance and its tasks; panics
    /// with the last state seen after `within`.
    pub async fn wait_until(
        &self,
        instance: WorkflowInstanceId,
        within: Duration,
        what: &str,
        check: impl Fn(&WorkflowInstance, &[TaskInstance]) -> bool,
    ) -> (WorkflowInstance, Vec<TaskInstance>) {
        let deadline = Instant::now() + within;
        loop {
            let wi = self.store.workflow_instance(instance).await.expect("load").expect("instance exists");
            let tasks = self.store.task_instances(instance).await.expect("load tasks");
            if check(&wi, &tasks) {
                return (wi, tasks);
            }
            if Instant::now() > deadline {
                let summary: Vec<String> = tasks.iter().map(|t| format!("{}={}#{}", t.name, t.state, t.attempt)).collect();
                panic!("[{}] {what}: not reached within {within:?}; instance {} is {} with tasks {summary:?}", self.name, wi.id, wi.state);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the instance to reach a final state.
    pub async fn wait_finished(&self, instance: WorkflowInstanceId, within: Duration) -> (WorkflowInstance, Vec<TaskInstance>) {
        self.wait_until(instance, within, "finish", |wi, _| wi.state.is_final()).await
    }

    /// The address of the master that fires schedules now, if any.
    pub fn cron_leader(&self) -> Option<String> {
        self.masters.iter().find(|(m, _)| m.is_cron_leader()).and_then(|(m, _)| m.addr())
    }

    /// Whether some master fires schedules now.
    pub fn has_cron_leader(&self) -> bool {
        self.masters.iter().any(|(m, _)| m.is_cron_leader())
    }

    /// Addresses of the running masters.
    pub fn master_addrs(&self) -> Vec<String> {
        self.masters.iter().filter_map(|(m, _)| m.addr()).collect()
    }

    /// Addresses of the running workers.
    pub fn worker_addrs(&self) -> Vec<String> {
        self.workers.iter().map(|(w, _)| w.addr()).collect()
    }

    /// Kills the worker at `addr` as a machine death would: its processes
    /// die, nothing is reported, its registry session ends. Cluster only.
    pub async fn crash_worker(&mut self, addr: &str) {
        assert!(matches!(self.registries, Registries::ZooKeeper { .. }), "crash_worker needs a cluster sandbox");
        let i = self.workers.iter().position(|(w, _)| w.addr() == addr).expect("a worker at that address");
        let (mut worker, session) = self.workers.remove(i);
        worker.crash();
        session.close().await;
    }

    /// Kills the master at `addr` as a crash would: its work stops at once,
    /// nothing is handed over, and its registry session ends (its node
    /// disappears, as when a dead process's session expires). Cluster only:
    /// in standalone every role shares one session.
    pub async fn crash_master(&mut self, addr: &str) {
        assert!(matches!(self.registries, Registries::ZooKeeper { .. }), "crash_master needs a cluster sandbox");
        let i = self.masters.iter().position(|(m, _)| m.addr().as_deref() == Some(addr)).expect("a master at that address");
        let (mut master, session) = self.masters.remove(i);
        master.crash();
        session.close().await;
    }

    /// `sluice standalone` killed and started again on the same database:
    /// its master and worker die as a crash would (the worker's tasks with
    /// it), the embedded registry and its queue are gone, and a new master
    /// and worker (`slots` slots) start on a fresh one. Standalone only.
    pub async fn restart_standalone(&mut self, slots: u32) {
        assert!(matches!(self.registries, Registries::Embedded(_)), "restart_standalone needs a standalone sandbox");
        for (mut worker, _) in self.workers.drain(..) {
            worker.crash();
        }
        for (mut master, _) in self.masters.drain(..) {
            master.crash();
        }
        self.registries = Registries::Embedded(Arc::new(EmbeddedRegistry::new().session()));
        self.add_master().await;
        self.add_worker(&["default"], slots).await;
    }

    /// Stops every role (workers first, so they report what they ran).
    pub async fn shutdown(mut self) {
        for (mut worker, _) in self.workers.drain(..) {
            let _ = worker.stop().await;
        }
        for (mut master, _) in self.masters.drain(..) {
            let _ = master.stop().await;
        }
        let _ = self.api.stop().await;
        for session in self.sessions.drain(..) {
            session.close().await;
        }
    }
}

/// Instantiates each listed scenario, an `async fn name(sandbox: Sandbox)`
/// of the calling module, once in standalone and once on a 2-master /
/// 2-worker cluster (test modules `standalone::name` and `cluster::name`).
#[macro_export]
macro_rules! both_deployments {
    ($($test:ident),+ $(,)?) => {
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test($crate::Sandbox::standalone().await).await;
                }
            )+
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test($crate::Sandbox::cluster(2, 2).await).await;
                }
            )+
        }
    };
}

/// An HTTP client for tests. reqwest is built without a TLS provider (the
/// workspace uses ring, installed here, instead of aws-lc).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A shell task with `script`.
pub fn shell(name: &str, script: &str, deps: &[&str]) -> TaskSpec {
    let mut task = TaskSpec::new(name, "shell");
    task.body.insert("script".into(), script.into());
    task.deps = deps.iter().map(|d| d.to_string()).collect();
    task
}

/// A workflow of `tasks` with default settings.
pub fn workflow(name: &str, tasks: Vec<TaskSpec>) -> WorkflowSpec {
    WorkflowSpec {
        name: name.into(),
        description: String::new(),
        params: Params::new(),
        failure_strategy: FailureStrategy::End,
        priority: Priority::Medium,
        worker_group: WorkerGroup::default(),
        tasks,
    }
}
