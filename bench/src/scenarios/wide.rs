//! wide: throughput through one master and one worker. One workflow of
//! 10,000 independent no-op tasks, then 1,000 workflows of 10 tasks
//! submitted at once; tasks/s end to end, each role's CPU and peak RSS.

use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Nullable};
use diesel::QueryableByName;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use crate::deploy::{sql_query, workflow, Deployment, Kind, Options, PROJECT};
use crate::report::{num, Outcome, Table};

#[derive(QueryableByName)]
struct Progress {
    #[diesel(sql_type = BigInt)]
    total: i64,
    #[diesel(sql_type = BigInt)]
    done: i64,
    #[diesel(sql_type = BigInt)]
    failed: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    first_created: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    last_end: Option<i64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Throughput {
    pub case: String,
    pub workflows: usize,
    pub tasks: usize,
    /// First submit (instance created) to the last instance's end.
    pub elapsed_ms: f64,
    pub tasks_per_s: f64,
    /// CPU over the case's wall time, in % of one core, per role.
    pub cpu_percent: Vec<(String, f64)>,
    /// Peak RSS (VmHWM), MiB, per role.
    pub peak_rss_mib: Vec<(String, f64)>,
}

fn independent(name: &str, tasks: usize) -> serde_json::Value {
    let tasks: Vec<(String, String, Vec<String>)> = (0..tasks).map(|i| (format!("t{i:05}"), "true".to_owned(), vec![])).collect();
    workflow(name, &tasks)
}

async fn case(label: &str, workflows: usize, tasks_each: usize, worker_slots: Option<u32>) -> anyhow::Result<Throughput> {
    let deployment = Deployment::start(Kind::Cluster, Options { worker_slots }).await?;
    let result = async {
        let api = &deployment.api;
        api.create_project(PROJECT).await?;
        let name = format!("wide_{tasks_each}");
        api.put_workflow(PROJECT, &independent(&name, tasks_each)).await?;
        let url = deployment.database_url().expect("cluster");
        let cpu_before: Vec<Duration> = deployment.roles.iter().map(|r| r.cpu_time()).collect();
        let started = Instant::now();
        futures::stream::iter(0..workflows)
            .map(|_| api.run(PROJECT, &name))
            .buffer_unordered(32)
            .try_collect::<Vec<i64>>()
            .await?;
        let query = format!(
            "SELECT count(*) AS total, \
                    count(*) FILTER (WHERE state IN ('success', 'failure', 'stopped')) AS done, \
                    count(*) FILTER (WHERE state <> 'success' AND state IN ('failure', 'stopped')) AS failed, \
                    min(created_at) AS first_created, max(end_time) AS last_end \
             FROM workflow_instances WHERE workflow_name = '{name}'"
        );
        let progress = loop {
            let p = sql_query::<Progress>(&url, &query).await?.pop().expect("one row");
            if p.total as usize == workflows && p.done == p.total {
                break p;
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "{label}: {} of {workflows} done after 30 min", p.done);
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let wall = started.elapsed();
        anyhow::ensure!(progress.failed == 0, "{label}: {} instances did not succeed", progress.failed);
        let elapsed_ms = (progress.last_end.unwrap_or(0) - progress.first_created.unwrap_or(0)) as f64;
        let tasks = workflows * tasks_each;
        let cpu_percent = deployment
            .roles
            .iter()
            .zip(cpu_before)
            .map(|(r, before)| (r.name.clone(), (r.cpu_time() - before).as_secs_f64() / wall.as_secs_f64() * 100.0))
            .collect();
        let peak_rss_mib = deployment.roles.iter().map(|r| (r.name.clone(), r.rss_mib().1)).collect();
        anyhow::Ok(Throughput {
            case: label.to_owned(),
            workflows,
            tasks,
            elapsed_ms,
            tasks_per_s: tasks as f64 / (elapsed_ms / 1000.0),
            cpu_percent,
            peak_rss_mib,
        })
    }
    .await;
    tokio::task::spawn_blocking(move || deployment.stop()).await?;
    result
}

/// `worker_slots`: the worker's slots (default: as shipped, twice the cores).
pub async fn run(scale: f64, worker_slots: Option<u32>) -> anyhow::Result<Outcome> {
    let n = |full: usize| ((full as f64 * scale).round() as usize).max(1);
    let results = vec![
        case(&format!("1 workflow × {} tasks", n(10_000)), 1, n(10_000), worker_slots).await?,
        case(&format!("{} workflows × 10 tasks", n(1_000)), n(1_000), 10, worker_slots).await?,
    ];
    let mut table = Table::new(
        format!(
            "wide: no-op tasks through 1 master + 1 worker (cluster), {} worker slots",
            worker_slots.map_or("default".to_owned(), |s| s.to_string())
        ),
        &["case", "tasks", "elapsed s", "tasks/s", "CPU % master", "CPU % worker", "CPU % api", "peak RSS MiB master", "worker", "api"],
    );
    let pick = |pairs: &[(String, f64)], role: &str| pairs.iter().find(|(r, _)| r == role).map(|p| p.1).unwrap_or(f64::NAN);
    for r in &results {
        table.row(vec![
            r.case.clone(),
            r.tasks.to_string(),
            num(r.elapsed_ms / 1000.0, 1),
            num(r.tasks_per_s, 0),
            num(pick(&r.cpu_percent, "master"), 0),
            num(pick(&r.cpu_percent, "worker"), 0),
            num(pick(&r.cpu_percent, "api"), 0),
            num(pick(&r.peak_rss_mib, "master"), 0),
            num(pick(&r.peak_rss_mib, "worker"), 0),
            num(pick(&r.peak_rss_mib, "api"), 0),
        ]);
    }
    Ok(Outcome { scenario: "wide", tables: vec![table], json: json!({ "scale": scale, "worker_slots": worker_slots, "results": results }) })
}
