//! chain40: one workflow of 40 sequential shell tasks, run with `true` and
//! with `sleep 0.1`, in standalone and in a cluster (the headline figure).

use std::time::Duration;

use serde_json::json;

use crate::deploy::{workflow, Deployment, Kind, Options, PROJECT};
use crate::report::{num, Outcome, Table};
use crate::stats::{ChainFigures, ChainRun, TaskTimes};

pub const TASKS: usize = 40;
/// The two task bodies: no work at all, and a tenth of a second of it.
pub const SCRIPTS: [&str; 2] = ["true", "sleep 0.1"];

/// Figures of one deployment and script.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub deployment: &'static str,
    pub script: String,
    pub figures: ChainFigures,
    pub run: ChainRun,
}

/// A chain workflow document: `t00` → `t01` → … each running `script`.
pub fn chain_document(name: &str, script: &str, tasks: usize) -> serde_json::Value {
    let tasks: Vec<(String, String, Vec<String>)> = (0..tasks)
        .map(|i| {
            let deps = if i == 0 { vec![] } else { vec![format!("t{:02}", i - 1)] };
            (format!("t{i:02}"), script.to_owned(), deps)
        })
        .collect();
    workflow(name, &tasks)
}

/// Runs the chain of `script` once on `deployment` and reads its times back.
pub async fn run_chain(deployment: &Deployment, name: &str, script: &str, tasks: usize) -> anyhow::Result<ChainRun> {
    deployment.api.put_workflow(PROJECT, &chain_document(name, script, tasks)).await?;
    let id = deployment.api.run(PROJECT, name).await?;
    let instance = deployment.api.wait_final(id, Duration::from_secs(600)).await?;
    anyhow::ensure!(instance.state == "success", "chain instance {id} ended {}", instance.state);
    let tasks = instance
        .tasks
        .unwrap_or_default()
        .into_iter()
        .map(|t| Ok(TaskTimes { name: t.name, start: t.start_time.ok_or_else(no_time)?, end: t.end_time.ok_or_else(no_time)? }))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ChainRun { submitted: instance.created_at, finished: instance.end_time.ok_or_else(no_time)?, tasks })
}

fn no_time() -> anyhow::Error {
    anyhow::anyhow!("a finished run without its times")
}

/// chain40 on one deployment: a short warm-up chain (first connections,
/// first process spawns), then each script `runs` times; the run with the
/// median total is reported.
pub async fn measure(kind: Kind, runs: usize) -> anyhow::Result<Vec<Measured>> {
    let deployment = Deployment::start(kind, Options::default()).await?;
    deployment.api.create_project(PROJECT).await?;
    let result = async {
        run_chain(&deployment, "warmup", "true", 3).await?;
        let mut measured = Vec::new();
        for script in SCRIPTS {
            let name = if script == "true" { "chain40_true" } else { "chain40_sleep" };
            let mut samples = Vec::new();
            for _ in 0..runs.max(1) {
                samples.push(run_chain(&deployment, name, script, TASKS).await?);
            }
            samples.sort_by(|a, b| a.figures().total_ms.total_cmp(&b.figures().total_ms));
            let run = samples.swap_remove(samples.len() / 2);
            measured.push(Measured { deployment: kind.name(), script: script.to_owned(), figures: run.figures(), run });
        }
        anyhow::Ok(measured)
    }
    .await;
    tokio::task::spawn_blocking(move || deployment.stop()).await?;
    result
}

pub fn table(measured: &[Measured]) -> Table {
    let mut table = Table::new(
        "chain40: 40 sequential tasks, submit to final state (median of the runs)",
        &["deployment", "task", "total ms", "task run ms", "overhead/task ms", "gap p50 ms", "gap max ms"],
    );
    for m in measured {
        let f = &m.figures;
        table.row(vec![
            m.deployment.into(),
            format!("`{}`", m.script),
            num(f.total_ms, 0),
            num(f.task_run_ms, 0),
            num(f.overhead_per_task_ms, 2),
            num(f.gap_p50_ms, 1),
            num(f.gap_max_ms, 1),
        ]);
    }
    table
}

pub async fn run(runs: usize) -> anyhow::Result<(Outcome, Vec<Measured>)> {
    let mut measured = measure(Kind::Standalone, runs).await?;
    measured.extend(measure(Kind::Cluster, runs).await?);
    let json = json!({ "tasks": TASKS, "runs": runs, "results": measured });
    Ok((Outcome { scenario: "chain40", tables: vec![table(&measured)], json }, measured))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_document_links_each_task_to_the_previous_one() {
        let doc = chain_document("c", "true", 3);
        let tasks = doc["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 3);
        assert_eq!(tasks[0]["deps"], json!([]));
        assert_eq!(tasks[2]["name"], "t02");
        assert_eq!(tasks[2]["deps"], json!(["t01"]));
        assert_eq!(tasks[1]["script"], "true");
    }
}
