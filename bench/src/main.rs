//! `sluice-bench`: Sluice's benchmark suite. Every scenario starts the real
//! `sluice` binary's roles as processes (standalone, or api + master +
//! worker on ZooKeeper and PostgreSQL), drives them through the REST API,
//! prints a table and writes `<json-out>/<scenario>.json`. The peer
//! scenario runs the same chain through Apache Airflow. `bench/run.sh` is
//! the one command that prepares the servers and runs them all.

mod deploy;
mod procs;
mod report;
mod scenarios;
mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice-bench", about = "Sluice's benchmark suite")]
struct Cli {
    /// Where each scenario writes `<scenario>.json`.
    #[arg(long, global = true, default_value = "bench/results")]
    json_out: PathBuf,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Every scenario, in order (peer included: several minutes).
    All {
        #[command(flatten)]
        scale: Scale,
    },
    /// 40 sequential tasks in standalone and in a cluster.
    Chain40 {
        /// Runs per script; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Tasks/s through one master and one worker, with their CPU and RSS.
    Wide {
        #[command(flatten)]
        scale: Scale,
    },
    /// Many schedules firing at once: lag, duplicates, misses.
    Cron {
        #[command(flatten)]
        scale: Scale,
    },
    /// Stopping one instance of many queued and running tasks.
    Stop {
        #[command(flatten)]
        scale: Scale,
    },
    /// Idle RSS and start-to-ready time of every role.
    Footprint,
    /// REST latency over a million task-instance rows.
    Api {
        #[command(flatten)]
        scale: Scale,
    },
    /// chain40 through Apache Airflow next to Sluice's cluster figures.
    Peer,
}

/// The size of the heavy scenarios; the defaults are the full scale.
#[derive(clap::Args, Clone)]
struct Scale {
    /// Multiplies the task counts of `wide` (10,000 and 1,000 × 10).
    #[arg(long, default_value_t = 1.0)]
    wide_scale: f64,
    /// Schedules in `cron`.
    #[arg(long, default_value_t = 10_000)]
    cron_schedules: usize,
    /// Seconds between a schedule's fires in `cron`.
    #[arg(long, default_value_t = 10)]
    cron_every: u32,
    /// Seconds of fires measured in `cron`.
    #[arg(long, default_value_t = 60)]
    cron_window: u32,
    /// Worker slots in `wide` (default: as shipped, twice the CPU cores).
    #[arg(long)]
    wide_slots: Option<u32>,
    /// Tasks of the instance `stop` stops.
    #[arg(long, default_value_t = 10_000)]
    stop_tasks: usize,
    /// Task-instance rows generated for `api`.
    #[arg(long, default_value_t = 1_000_000)]
    api_rows: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let out = cli.json_out;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.scenario {
            Scenario::All { scale } => {
                let (chain, measured) = scenarios::chain40::run(3).await?;
                chain.publish(&out)?;
                scenarios::footprint::run().await?.publish(&out)?;
                scenarios::wide::run(scale.wide_scale, scale.wide_slots).await?.publish(&out)?;
                scenarios::cron::run(scale.cron_schedules, scale.cron_every, scale.cron_window).await?.publish(&out)?;
                scenarios::stop::run(scale.stop_tasks).await?.publish(&out)?;
                scenarios::api::run(scale.api_rows).await?.publish(&out)?;
                scenarios::peer::run(Some(measured)).await?.publish(&out)?;
            }
            Scenario::Chain40 { runs } => scenarios::chain40::run(runs).await?.0.publish(&out)?,
            Scenario::Wide { scale } => scenarios::wide::run(scale.wide_scale, scale.wide_slots).await?.publish(&out)?,
            Scenario::Cron { scale } => scenarios::cron::run(scale.cron_schedules, scale.cron_every, scale.cron_window).await?.publish(&out)?,
            Scenario::Stop { scale } => scenarios::stop::run(scale.stop_tasks).await?.publish(&out)?,
            Scenario::Footprint => scenarios::footprint::run().await?.publish(&out)?,
            Scenario::Api { scale } => scenarios::api::run(scale.api_rows).await?.publish(&out)?,
            Scenario::Peer => scenarios::peer::run(None).await?.publish(&out)?,
        }
        anyhow::Ok(())
    })
}
