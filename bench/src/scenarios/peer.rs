//! peer: chain40 through Apache Airflow (2.10 from PyPI, LocalExecutor on
//! the local PostgreSQL, a real scheduler process), next to Sluice's
//! cluster figures from the same invocation, with the ratio.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde_json::json;
use sluice_testkit::postgres::TempDatabase;

use super::chain40::{self, Measured, SCRIPTS, TASKS};
use crate::deploy::Kind;
use crate::report::{num, Outcome, Table};
use crate::stats::{ChainFigures, ChainRun};

fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peer")
}

/// The virtualenv's python, installing Airflow on first use.
fn airflow_python() -> anyhow::Result<String> {
    let out = Command::new(peer_dir().join("setup.sh")).stderr(Stdio::inherit()).output().context("running bench/peer/setup.sh")?;
    if !out.status.success() {
        bail!("bench/peer/setup.sh failed: {}", out.status);
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// One chain of `script` through Airflow on a fresh metadata database.
fn airflow_chain(python: &str, script: &str) -> anyhow::Result<(ChainRun, String)> {
    let db = TempDatabase::create();
    let home = tempfile::Builder::new().prefix("sluice-bench-airflow-").tempdir()?;
    let url = db.url().replacen("postgres://", "postgresql+psycopg2://", 1);
    let out = Command::new(python)
        .arg(peer_dir().join("airflow_chain40.py"))
        .args(["--db-url", &url, "--script", script, "--tasks", &TASKS.to_string()])
        .arg("--home")
        .arg(home.path())
        .stderr(Stdio::inherit())
        .output()
        .context("running the Airflow peer")?;
    if !out.status.success() {
        bail!("the Airflow peer failed ({}); its home was {}", out.status, home.keep().display());
    }
    let line = String::from_utf8(out.stdout)?.lines().last().context("the Airflow peer printed no run")?.to_owned();
    let value: serde_json::Value = serde_json::from_str(&line)?;
    let version = value["airflow_version"].as_str().unwrap_or("?").to_owned();
    Ok((serde_json::from_value(value)?, version))
}

/// Runs the peer; `sluice` is Sluice's cluster chain40 from this invocation
/// (measured here when absent).
pub async fn run(sluice: Option<Vec<Measured>>) -> anyhow::Result<Outcome> {
    let sluice = match sluice {
        Some(measured) => measured,
        None => chain40::measure(Kind::Cluster, 3).await?,
    };
    let python = tokio::task::spawn_blocking(airflow_python).await??;
    let mut table = Table::new(
        "peer: chain40, Sluice cluster vs Apache Airflow (LocalExecutor, PostgreSQL), same machine, same run",
        &["task", "figure", "Sluice", "Airflow", "Airflow / Sluice"],
    );
    let mut results = Vec::new();
    for script in SCRIPTS {
        let ours = sluice
            .iter()
            .find(|m| m.deployment == "cluster" && m.script == script)
            .context("Sluice's cluster chain40 figures")?;
        let python = python.clone();
        let (run, version) = tokio::task::spawn_blocking(move || airflow_chain(&python, script)).await??;
        let theirs = run.figures();
        type Figure = fn(&ChainFigures) -> f64;
        let rows: [(&str, Figure); 3] = [
            ("total ms", |f| f.total_ms),
            ("overhead/task ms", |f| f.overhead_per_task_ms),
            ("gap p50 ms", |f| f.gap_p50_ms),
        ];
        for (label, pick) in rows {
            let (a, b) = (pick(&ours.figures), pick(&theirs));
            table.row(vec![format!("`{script}`"), label.into(), num(a, 1), num(b, 1), format!("{}×", num(b / a, 0))]);
        }
        results.push(json!({ "script": script, "airflow_version": version, "sluice": ours.figures, "airflow": theirs, "airflow_run": run }));
    }
    Ok(Outcome { scenario: "peer", tables: vec![table], json: json!({ "tasks": TASKS, "results": results }) })
}
