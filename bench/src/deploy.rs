//! Sluice deployed the two ways users run it, each role a process of the
//! real binary: `sluice standalone` on SQLite, and a cluster of `sluice api`,
//! `sluice master` and `sluice worker` on ZooKeeper and a fresh PostgreSQL
//! database. The bench talks to it as users do, through the REST API.

use std::time::Duration;

use anyhow::{bail, Context};
use diesel::pg::Pg;
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use serde_json::{json, Value};
use sluice_api::types::{RunAccepted, WorkflowInstanceView};
use sluice_testkit::postgres::TempDatabase;

use crate::procs::{free_port, RoleProcess};

/// The project every scenario works in.
pub const PROJECT: &str = "bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Standalone,
    Cluster,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Standalone => "standalone",
            Kind::Cluster => "cluster",
        }
    }
}

/// Knobs a scenario may turn; everything else is the shipped default.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Worker slots (default: twice the CPU cores, as shipped).
    pub worker_slots: Option<u32>,
}

pub struct Deployment {
    /// The role processes in start order (`standalone`, or `api`, `master`, `worker`).
    pub roles: Vec<RoleProcess>,
    pub api: Api,
    db: Option<TempDatabase>,
    dir: tempfile::TempDir,
}

impl Deployment {
    /// Starts the deployment and the `bench` project. Blocking: call it
    /// from `spawn_blocking` or before the runtime is busy.
    pub async fn start(kind: Kind, options: Options) -> anyhow::Result<Deployment> {
        tokio::task::spawn_blocking(move || Deployment::start_blocking(kind, options)).await?
    }

    fn start_blocking(kind: Kind, options: Options) -> anyhow::Result<Deployment> {
        let dir = tempfile::Builder::new().prefix("sluice-bench-").tempdir()?;
        let api_port = free_port();
        let path = |p: &str| dir.path().join(p).to_string_lossy().into_owned();
        let mut worker_env = vec![
            ("SLUICE_WORKER__LISTEN".into(), format!("127.0.0.1:{}", free_port())),
            ("SLUICE_WORKER__GROUPS".into(), "default".into()),
            ("SLUICE_WORKER__WORK_DIR".into(), path("work")),
            ("SLUICE_WORKER__LOG_DIR".into(), path("logs")),
        ];
        if let Some(slots) = options.worker_slots {
            worker_env.push(("SLUICE_WORKER__SLOTS".into(), slots.to_string()));
        }
        let master_env = vec![("SLUICE_MASTER__LISTEN".into(), format!("127.0.0.1:{}", free_port()))];
        let api_env = vec![("SLUICE_API__LISTEN".into(), format!("127.0.0.1:{api_port}"))];
        let (roles, db) = match kind {
            Kind::Standalone => {
                let mut env = vec![("SLUICE_DATABASE__URL".into(), format!("sqlite://{}", path("sluice.db")))];
                env.extend(worker_env);
                env.extend(master_env);
                env.extend(api_env);
                let standalone = RoleProcess::spawn("standalone", &["standalone", "--no-example"], &env, "api", dir.path())?;
                (vec![standalone], None)
            }
            Kind::Cluster => {
                let db = TempDatabase::create();
                let zookeeper = std::env::var("SLUICE_TEST_ZK").context("SLUICE_TEST_ZK (host:port of ZooKeeper) is not set")?;
                let common = [
                    ("SLUICE_CLUSTER__NAME".to_owned(), format!("bench-{:08x}", fastrand::u32(..))),
                    ("SLUICE_DATABASE__URL".to_owned(), db.url().to_owned()),
                    ("SLUICE_REGISTRY__KIND".to_owned(), "zookeeper".to_owned()),
                    ("SLUICE_REGISTRY__ZOOKEEPER".to_owned(), zookeeper),
                ];
                let with = |extra: Vec<(String, String)>| common.iter().cloned().chain(extra).collect::<Vec<_>>();
                // One at a time: the first to open the database migrates it.
                let api = RoleProcess::spawn("api", &["api"], &with(api_env), "api", dir.path())?;
                let master = RoleProcess::spawn("master", &["master"], &with(master_env), "master", dir.path())?;
                let worker = RoleProcess::spawn("worker", &["worker"], &with(worker_env), "worker", dir.path())?;
                (vec![api, master, worker], Some(db))
            }
        };
        let api = Api::new(format!("http://127.0.0.1:{api_port}"));
        Ok(Deployment { roles, api, db, dir })
    }

    /// The cluster's PostgreSQL URL (`None` in standalone).
    pub fn database_url(&self) -> Option<String> {
        self.db.as_ref().map(|db| db.url().to_owned())
    }

    /// Stops the roles in reverse start order; the database is dropped after.
    /// With `SLUICE_BENCH_KEEP` set, the roles' logs and work directories are
    /// kept for a look afterwards.
    pub fn stop(mut self) {
        while let Some(mut role) = self.roles.pop() {
            role.stop();
        }
        if std::env::var_os("SLUICE_BENCH_KEEP").is_some() {
            eprintln!("kept the deployment's logs in {}", self.dir.keep().display());
        }
    }
}

/// The REST API as the bench uses it.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: String) -> Api {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Api { base: format!("{base}/api/v1"), http: reqwest::Client::new() }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("API answered {status}: {text}");
        }
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
    }

    pub async fn create_project(&self, name: &str) -> anyhow::Result<()> {
        self.send(self.http.post(format!("{}/projects", self.base)).json(&json!({"name": name, "description": "benchmarks"}))).await?;
        Ok(())
    }

    /// Stores a workflow document (`name`, `tasks`, optional `schedule`) in `project`.
    pub async fn put_workflow(&self, project: &str, document: &Value) -> anyhow::Result<()> {
        let name = document["name"].as_str().context("document has a name")?;
        self.send(self.http.put(format!("{}/projects/{project}/workflows/{name}", self.base)).json(document)).await?;
        Ok(())
    }

    /// Starts a run; returns the workflow instance id.
    pub async fn run(&self, project: &str, workflow: &str) -> anyhow::Result<i64> {
        let accepted: RunAccepted =
            serde_json::from_value(self.send(self.http.post(format!("{}/projects/{project}/workflows/{workflow}/runs", self.base))).await?)?;
        accepted.workflow_instance_id.context("run accepted without an instance id")
    }

    /// A workflow instance with its tasks.
    pub async fn instance(&self, id: i64) -> anyhow::Result<WorkflowInstanceView> {
        Ok(serde_json::from_value(self.send(self.http.get(format!("{}/workflow-instances/{id}", self.base))).await?)?)
    }

    /// POST `body` to `path` (under `/api/v1`).
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    /// GET `path` (under `/api/v1`), for latency measurements.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    /// Polls until instance `id` is final; returns it.
    pub async fn wait_final(&self, id: i64, within: Duration) -> anyhow::Result<WorkflowInstanceView> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let instance = self.instance(id).await?;
            if matches!(instance.state.as_str(), "success" | "failure" | "stopped") {
                return Ok(instance);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("instance {id} not final within {within:?}: {}", instance.state);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs `sql` (several statements) on `url`.
pub async fn sql_execute(url: &str, sql: &str) -> anyhow::Result<()> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut conn = PgConnection::establish(&url)?;
        conn.batch_execute(&sql).with_context(|| format!("running {sql}"))?;
        Ok(())
    })
    .await?
}

/// Runs the query `sql` on `url`.
pub async fn sql_query<T: QueryableByName<Pg> + Send + 'static>(url: &str, sql: &str) -> anyhow::Result<Vec<T>> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<T>> {
        let mut conn = PgConnection::establish(&url)?;
        diesel::sql_query(&sql).load(&mut conn).with_context(|| format!("running {sql}"))
    })
    .await?
}

/// A workflow document of shell tasks: `(name, script, deps)`.
pub fn workflow(name: &str, tasks: &[(String, String, Vec<String>)]) -> Value {
    let tasks: Vec<Value> = tasks.iter().map(|(n, script, deps)| json!({"name": n, "type": "shell", "script": script, "deps": deps})).collect();
    json!({"project": PROJECT, "name": name, "tasks": tasks})
}
