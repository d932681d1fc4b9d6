//! footprint: each role's idle RSS and its time from process start to
//! ready (the runtime's `started` log line for its last role).

use std::time::Duration;

use serde_json::json;

use crate::deploy::{Deployment, Kind, Options};
use crate::report::{num, Outcome, Table};

/// How long a deployment idles before its RSS is read.
const SETTLE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, serde::Serialize)]
pub struct Footprint {
    pub role: String,
    pub ready_ms: f64,
    pub idle_rss_mib: f64,
}

async fn measure(kind: Kind) -> anyhow::Result<Vec<Footprint>> {
    let deployment = Deployment::start(kind, Options::default()).await?;
    tokio::time::sleep(SETTLE).await;
    let figures = deployment
        .roles
        .iter()
        .map(|r| Footprint { role: r.name.clone(), ready_ms: r.ready_after.as_secs_f64() * 1000.0, idle_rss_mib: r.rss_mib().0 })
        .collect();
    tokio::task::spawn_blocking(move || deployment.stop()).await?;
    Ok(figures)
}

pub async fn run() -> anyhow::Result<Outcome> {
    let mut figures = measure(Kind::Cluster).await?;
    let cluster_total: f64 = figures.iter().map(|f| f.idle_rss_mib).sum();
    figures.extend(measure(Kind::Standalone).await?);
    let mut table = Table::new("footprint: idle RSS and start-to-ready, each role its own process", &["role", "ready ms", "idle RSS MiB"]);
    for f in &figures {
        table.row(vec![f.role.clone(), num(f.ready_ms, 0), num(f.idle_rss_mib, 1)]);
    }
    table.row(vec!["master + worker + api".into(), String::new(), num(cluster_total, 1)]);
    Ok(Outcome { scenario: "footprint", tables: vec![table], json: json!({ "roles": figures, "cluster_idle_rss_mib": cluster_total }) })
}
