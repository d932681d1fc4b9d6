//! The chaos test's long form, run by hand:
//!
//! ```sh
//! cargo run --release -p sluice-e2e --bin chaos -- --minutes 30
//! ```
//!
//! 200 workflows (`--workflows`) spread over the chaos period, SIGKILLs of
//! random masters and workers every few seconds, one 10 s ZooKeeper outage
//! and one PostgreSQL restart; prints progress, then the summary, and exits
//! non-zero if any check failed. Needs what `scripts/test.sh` needs (the
//! ZooKeeper package, PostgreSQL on `SLUICE_TEST_PG` or 127.0.0.1:5432).
//! See `sluice_e2e::chaos` for what is checked.

use std::process::ExitCode;

use clap::Parser;
use sluice_e2e::chaos::{self, ChaosConfig};

#[derive(Parser)]
#[command(about = "Sluice's chaos test, long form")]
struct Args {
    /// How long to inject faults, in minutes.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// How many workflows to run, spread over the chaos period.
    #[arg(long, default_value_t = 200)]
    workflows: usize,
    /// Replays the random choices of an earlier run.
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    match chaos::run(ChaosConfig::long(args.minutes, args.workflows, seed)).await {
        Ok(report) => {
            println!("{report}");
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(error) => {
            eprintln!("chaos: {error}");
            ExitCode::from(2)
        }
    }
}
