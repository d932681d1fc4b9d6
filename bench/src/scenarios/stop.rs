//! stop: how long stopping a wide instance takes. One workflow of 10,000
//! independent `sleep 600` tasks is started; once every task is in the
//! queue and the worker's slots are all running, the instance is stopped
//! through the API. Measured from the stop request: the instance `stopped`
//! (what the API shows), and every task instance final (the running ones
//! killed on the worker, the queued ones withdrawn). In standalone and in a
//! cluster.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::deploy::{workflow, Deployment, Kind, Options, PROJECT};
use crate::report::{num, Outcome, Table};

#[derive(Debug, Clone, serde::Serialize)]
pub struct StopFigures {
    pub deployment: &'static str,
    pub tasks: usize,
    /// Task instances running when the stop was requested (the rest queued).
    pub running: usize,
    /// Stop request sent to the instance's end time (`stopped`), ms.
    pub to_stopped_ms: f64,
    /// Stop request sent to the last task instance's end time, ms.
    pub to_all_final_ms: f64,
    /// The API's answer to the stop request, ms.
    pub request_ms: f64,
}

const FINAL: [&str; 6] = ["success", "failure", "killed", "forced_success", "skipped", "need_failover"];

async fn measure(kind: Kind, tasks: usize) -> anyhow::Result<StopFigures> {
    let deployment = Deployment::start(kind, Options::default()).await?;
    let result = async {
        let api = &deployment.api;
        api.create_project(PROJECT).await?;
        let name = format!("stop_{tasks}");
        let body: Vec<(String, String, Vec<String>)> = (0..tasks).map(|i| (format!("t{i:05}"), "sleep 600".to_owned(), vec![])).collect();
        api.put_workflow(PROJECT, &workflow(&name, &body)).await?;
        let id = api.run(PROJECT, &name).await?;

        // Every task created and queued, and the worker busy.
        let waiting = Instant::now();
        let running = loop {
            let instance = api.instance(id).await?;
            let rows = instance.tasks.unwrap_or_default();
            let running = rows.iter().filter(|t| t.state == "running").count();
            let queued = rows.iter().filter(|t| t.state == "dispatched").count();
            if rows.len() == tasks && running > 0 && running + queued == tasks {
                // Slots fill within a moment of each other; give the last a beat.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let rows = api.instance(id).await?.tasks.unwrap_or_default();
                break rows.iter().filter(|t| t.state == "running").count();
            }
            anyhow::ensure!(waiting.elapsed() < Duration::from_secs(600), "{}: {} tasks, {running} running, {queued} queued after 10 min", kind.name(), rows.len());
            tokio::time::sleep(Duration::from_millis(500)).await;
        };

        let asked = Instant::now();
        let asked_at = chrono::Utc::now();
        api.post(&format!("/workflow-instances/{id}/stop"), &json!({})).await?;
        let request_ms = asked.elapsed().as_secs_f64() * 1000.0;
        // The listing carries the state without the 10,000 task rows.
        let listing = format!("/workflow-instances?project={PROJECT}&workflow={name}&limit=1");
        loop {
            let page = api.get(&listing).await?;
            let state = page["items"][0]["state"].as_str().unwrap_or_default().to_owned();
            if state == "stopped" {
                break;
            }
            anyhow::ensure!(asked.elapsed() < Duration::from_secs(120), "{}: instance {id} is {state} 2 min after the stop", kind.name());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The times the master wrote (same machine, same clock): polling a
        // 10,000-task instance would measure the polling.
        let instance = api.instance(id).await?;
        let rows = instance.tasks.unwrap_or_default();
        let open: Vec<&str> = rows.iter().filter(|t| !FINAL.contains(&t.state.as_str())).map(|t| t.state.as_str()).collect();
        anyhow::ensure!(open.is_empty(), "{}: instance {id} stopped with {} task instances not final: {:?}", kind.name(), open.len(), &open[..open.len().min(5)]);
        let since_ask = |at: chrono::DateTime<chrono::Utc>| (at - asked_at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        let stopped_at = instance.end_time.context("a stopped instance without an end time")?;
        let last_task_end = rows.iter().filter_map(|t| t.end_time).max().context("no task ended")?;
        let (to_stopped_ms, to_all_final_ms) = (since_ask(stopped_at), since_ask(last_task_end));
        anyhow::Ok(StopFigures {
            deployment: kind.name(),
            tasks,
            running,
            to_stopped_ms,
            to_all_final_ms,
            request_ms,
        })
    }
    .await;
    tokio::task::spawn_blocking(move || deployment.stop()).await?;
    result
}

pub async fn run(tasks: usize) -> anyhow::Result<Outcome> {
    let results = vec![measure(Kind::Standalone, tasks).await?, measure(Kind::Cluster, tasks).await?];
    let mut table = Table::new(
        format!("stop: one instance of {tasks} independent `sleep 600` tasks, stopped through the API"),
        &["deployment", "tasks", "running", "stop request ms", "→ stopped ms", "→ all tasks final ms"],
    );
    for r in &results {
        table.row(vec![
            r.deployment.to_owned(),
            r.tasks.to_string(),
            r.running.to_string(),
            num(r.request_ms, 1),
            num(r.to_stopped_ms, 0),
            num(r.to_all_final_ms, 0),
        ]);
    }
    Ok(Outcome { scenario: "stop", tables: vec![table], json: json!({ "tasks": tasks, "results": results }) })
}
